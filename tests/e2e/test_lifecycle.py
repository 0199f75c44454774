"""The whole task lifecycle driven by ``ctr``, against a real containerd 1.6 and runc, for each
runtime under test (``io.containerd.pyshim.v1``; ``io.containerd.runc.v2`` as the reference when
``PYSHIM_E2E_REFERENCE=1``): exit codes of ``ctr run --rm``, ``task ls`` states, exec, kill,
pause/resume, ps, metrics, stdin and the stdout/stderr streams (complete, separate, drained
before the exit is reported). Every test ends by checking that nothing is left behind: no shim
process, no bundle directory, no mount, no shim socket, no runc state.

pyshim runs every test twice: with its warm fork-server on (``forkserver-on``; up before the test,
see ``warm_forkserver``, so every daemon is one it forked) and off (``forkserver-off``: every
daemon is forked by its ``start``).

Facts of containerd 1.6 / ctr these tests rely on (observed with runc-v2):

* A container's init is PID 1 of its PID namespace: the kernel drops signals it has no handler
  for, SIGKILL included when sent from inside the container (``sh -c 'kill -9 $$'`` exits 0),
  and a plain ``ctr task kill`` (SIGTERM) of a ``sleep`` does nothing. Tests that need the
  init to react to SIGTERM give it a ``trap``.
* ``ctr run``/``ctr task exec`` exit with the task's exit status; ``ctr task delete`` prints
  ``task <id> exit with non-zero exit code <N>`` (a warning on stderr) for a non-zero status.
* ``ctr`` never sends CloseIO, so a container reading stdin never sees EOF: stdin tests read a
  bounded amount (``head``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import (
    IN_BOTH_FORKSERVER_MODES,
    assert_no_leftovers,
    background_ctr,
    expected_shim_parent,
    finish,
    remove_container,
    shim_processes,
    task_list,
    task_pids,
    task_status,
    unique_id,
    wait_for_status,
    wait_until,
)
from tests.e2e.containerd import PrivateContainerd

pytestmark = [IN_BOTH_FORKSERVER_MODES, pytest.mark.usefixtures("warm_forkserver")]

#: An init that exits with status 42 on SIGTERM (PID 1 needs a handler to see it at all) and
#: otherwise waits for a child ``sleep``; the child exists only once the trap is set.
TRAPPING_INIT = ("/bin/sh", "-c", "trap 'exit 42' TERM; /bin/sleep 1000 & wait")


def run_args(runtime: str, rootfs: Path) -> list[str]:
    return ["--runtime", runtime, "--rootfs", str(rootfs)]


def start_sleeper(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, container_id: str,
    *command: str,
) -> int:
    """``ctr run -d`` a container (``sleep 1000`` by default); returns its init pid."""
    containerd.ctr("run", "-d", *run_args(runtime, rootfs), container_id,
                   *(command or ("/bin/sleep", "1000")))
    pid, status = task_list(containerd)[container_id]
    assert status == "RUNNING"
    assert pid > 0
    return pid


def wait_for_trap(containerd: PrivateContainerd, container_id: str, processes: int = 2) -> None:
    """Wait until :data:`TRAPPING_INIT` has its ``sleep`` child (so its trap is set)."""
    wait_until(lambda: len(task_pids(containerd, container_id)) >= processes,
               what=f"{processes} processes in {container_id}")


def stream_difference(actual: str, expected: str) -> str:
    """A short description of how a large output differs from the expected one."""
    if actual == expected:
        return "as expected"
    prefix = expected.startswith(actual)
    return (f"has {len(actual)} bytes instead of {len(expected)}"
            f"{' (the tail is missing)' if prefix else ''}; ends with {actual[-40:]!r}")


def assert_stream(actual: str, expected: str, what: str) -> None:
    assert actual == expected, f"{what} {stream_difference(actual, expected)}"


def is_frozen(pid: int) -> bool:
    """Whether the freezer cgroup of ``pid`` is frozen (cgroup v1 freezer, or cgroup v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            state = Path("/sys/fs/cgroup/freezer", path.lstrip("/"), "freezer.state")
            return state.read_text().strip() == "FROZEN"
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            events = Path("/sys/fs/cgroup", line[3:].lstrip("/"), "cgroup.events")
            return "frozen 1" in events.read_text().splitlines()
    raise AssertionError(f"no freezer cgroup for pid {pid}")


def delete_stopped(containerd: PrivateContainerd, container_id: str) -> str:
    """``ctr task delete`` a stopped task, then the container; returns delete's stderr."""
    result = containerd.ctr("task", "delete", container_id)
    containerd.ctr("container", "rm", container_id)
    return result.stderr


# ------------------------------------------------------------------------- ctr run --rm


def test_run_rm_exit_status_zero_and_output(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ok")
    result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                 "/bin/echo", "hello from", cid)
    assert (result.returncode, result.stdout) == (0, f"hello from {cid}\n")
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, [cid])


def test_run_rm_exit_status_three(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("three")
    result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                 "/bin/sh", "-c", "exit 3", check=False)
    assert result.returncode == 3, result.stderr
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, [cid])


def test_run_rm_killed_by_sigkill_exits_137(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """SIGKILL from outside (a container's PID 1 cannot SIGKILL itself): ctr reports 137."""
    cid = unique_id("sigkill")
    with background_ctr(shim_containerd, "run", "--rm", *run_args(runtime, busybox_rootfs),
                        cid, "/bin/sleep", "1000") as ctr_run:
        wait_for_status(shim_containerd, cid, "RUNNING")
        shim_containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
        status, _, stderr = finish(ctr_run)
    assert status == 137, stderr
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, [cid])


def test_pid1_cannot_sigkill_itself_so_run_exits_zero(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """``sh -c 'kill -9 $$'`` as init: the kernel drops the signal, sh goes on and exits 0."""
    cid = unique_id("selfkill")
    result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                 "/bin/sh", "-c", "kill -9 $$; echo survived", check=False)
    assert (result.returncode, result.stdout) == (0, "survived\n"), result.stderr
    assert_no_leftovers(shim_containerd, [cid])


# ---------------------------------------------------------------- run -d, ls, kill, delete


def test_detached_run_ls_running_then_stopped_after_kill(
    shim_containerd: PrivateContainerd,
    runtime: str,
    busybox_rootfs: Path,
    warm_forkserver: psutil.Process | None,
) -> None:
    cid = unique_id("det")
    try:
        pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        assert psutil.Process(pid).cmdline() == ["/bin/sleep", "1000"]
        # The daemon comes from the fork-server when it is on, else from its start.
        [shim] = shim_processes(shim_containerd, cid)
        assert shim.ppid() == expected_shim_parent(shim_containerd, warm_forkserver)
        shim_containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
        wait_for_status(shim_containerd, cid, "STOPPED")
        assert task_list(shim_containerd)[cid][0] == pid
        stderr = delete_stopped(shim_containerd, cid)
        assert "exit code 137" in stderr
        assert task_status(shim_containerd, cid) is None
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_kill_default_sigterm_then_delete_prints_exit_status(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("term")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid, *TRAPPING_INIT)
        wait_for_trap(shim_containerd, cid)
        shim_containerd.ctr("task", "kill", cid)  # SIGTERM is ctr's default
        wait_for_status(shim_containerd, cid, "STOPPED")
        stderr = delete_stopped(shim_containerd, cid)
        assert f"task {cid} exit with non-zero exit code 42" in stderr
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_kill_all_signals_every_process(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """``kill --all``: the exec'd ``sleep`` dies of SIGTERM itself (143), which a plain kill of
    the init would not do (the init's exit makes the kernel SIGKILL it: 137)."""
    cid = unique_id("killall")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid, *TRAPPING_INIT)
        with background_ctr(shim_containerd, "task", "exec", "--exec-id", "sleeper", cid,
                            "/bin/sleep", "1000") as ctr_exec:
            wait_for_trap(shim_containerd, cid, processes=3)
            shim_containerd.ctr("task", "kill", "--all", cid)
            exec_status, _, exec_stderr = finish(ctr_exec)
        assert exec_status == 143, exec_stderr
        wait_for_status(shim_containerd, cid, "STOPPED")
        assert "exit code 42" in delete_stopped(shim_containerd, cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------------------------ exec


def test_exec_output_and_exit_status(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("exec")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        result = shim_containerd.ctr(
            "task", "exec", "--exec-id", "e1", cid,
            "/bin/sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 5", check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (
            5, "to-stdout\n", "to-stderr\n"
        )
        # ctr deleted the finished exec, so its id can be used again.
        again = shim_containerd.ctr("task", "exec", "--exec-id", "e1", cid,
                                    "/bin/sh", "-c", "echo $((6 * 7))")
        assert (again.returncode, again.stdout, again.stderr) == (0, "42\n", "")
        assert task_status(shim_containerd, cid) == "RUNNING"
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_ps_lists_init_and_exec_pids(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ps")
    try:
        init_pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        assert init_pid in task_pids(shim_containerd, cid)
        shim_containerd.ctr("task", "exec", "--detach", "--exec-id", "bg1", cid,
                            "/bin/sleep", "1001")
        pids = task_pids(shim_containerd, cid)
        assert init_pid in pids
        exec_pids = [pid for pid, info in pids.items() if "bg1" in info]
        assert len(exec_pids) == 1, pids
        assert psutil.Process(exec_pids[0]).cmdline() == ["/bin/sleep", "1001"]
        assert set(pids) == {init_pid, exec_pids[0]}
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------------ pause/resume, metrics


def test_pause_and_resume(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("pause")
    try:
        pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        shim_containerd.ctr("task", "pause", cid)
        assert task_list(shim_containerd)[cid] == (pid, "PAUSED")
        assert is_frozen(pid)
        refused = shim_containerd.ctr("task", "exec", "--exec-id", "while-paused", cid,
                                      "/bin/true", check=False)
        assert refused.returncode != 0
        assert "paused" in refused.stderr
        shim_containerd.ctr("task", "resume", cid)
        assert task_list(shim_containerd)[cid] == (pid, "RUNNING")
        assert not is_frozen(pid)
        result = shim_containerd.ctr("task", "exec", "--exec-id", "after", cid, "/bin/echo", "ok")
        assert result.stdout == "ok\n"
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_metrics_have_memory_and_pids_rows(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("metrics")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        output = shim_containerd.ctr("task", "metrics", cid).stdout
        rows = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.split()}
        assert cid in rows, output
        memory = [name for name in rows if name.startswith("memory.")]
        assert memory, output
        usage = rows.get("memory.usage_in_bytes") or rows.get("memory.usage")
        assert usage is not None and int(usage[0]) > 0, output
        assert rows["pids.current"] == ["1"], output
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# -------------------------------------------------------------------------------- stdio


def test_stdin_is_piped_through_ctr(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("stdin")
    result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                 "/bin/head", "-n", "2", input="hello\nworld\nnot read\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\nworld\n", "")
    assert_no_leftovers(shim_containerd, [cid])


def test_stdin_stdout_stderr_are_separate(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("stdio")
    result = shim_containerd.ctr(
        "run", "--rm", *run_args(runtime, busybox_rootfs), cid,
        "/bin/sh", "-c", "head -c 3; echo; echo to-stderr >&2; exit 4",
        input="abcdef", check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (4, "abc\n", "to-stderr\n")
    assert_no_leftovers(shim_containerd, [cid])


def test_large_output_arrives_complete(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """8 MiB on stdout and 1 MiB on stderr at the same time: no byte lost or mixed up."""
    cid = unique_id("large")
    script = ("head -c 1048576 /dev/zero | tr '\\0' e >&2 & "
              "head -c 8388608 /dev/zero | tr '\\0' o; wait")
    result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                 "/bin/sh", "-c", script, timeout=120)
    assert result.returncode == 0
    assert_stream(result.stdout, "o" * 8388608, "stdout")
    assert_stream(result.stderr, "e" * 1048576, "stderr")
    assert_no_leftovers(shim_containerd, [cid])


def test_exit_is_reported_after_output_is_drained(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """The process writes and exits at once: ctr still gets every byte, and the status."""
    cid = unique_id("drain")
    result = shim_containerd.ctr(
        "run", "--rm", *run_args(runtime, busybox_rootfs), cid,
        "/bin/sh", "-c", "yes x | head -c 1000000; yes y | head -c 300000 >&2; exit 7",
        check=False, timeout=120,
    )
    assert result.returncode == 7, result.stderr[-500:]
    assert_stream(result.stdout, "x\n" * 500000, "stdout")
    assert_stream(result.stderr, "y\n" * 150000, "stderr")
    assert_no_leftovers(shim_containerd, [cid])


def test_exec_exit_is_reported_after_its_output_is_drained(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("execdrain")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        result = shim_containerd.ctr(
            "task", "exec", "--exec-id", "burst", cid,
            "/bin/sh", "-c", "yes x | head -c 1000000; exit 9", check=False, timeout=120,
        )
        assert result.returncode == 9, result.stderr[-500:]
        assert_stream(result.stdout, "x\n" * 500000, "stdout")
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# --------------------------------------------------------------------- many short tasks


def test_many_short_lived_containers_in_a_row(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """A process that exits at once races the shim's Start, Wait, IO drain and Delete: every
    one of these runs must still succeed with its output and status."""
    ids = [unique_id(f"short{index}") for index in range(20)]
    failures = []
    for index, cid in enumerate(ids):
        command = ("/bin/true",) if index % 2 else ("/bin/echo", cid)
        result = shim_containerd.ctr("run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                                     *command, check=False)
        expected = "" if index % 2 else f"{cid}\n"
        if (result.returncode, result.stdout) != (0, expected):
            failures.append((cid, result.returncode, result.stdout, result.stderr))
    assert failures == []
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, ids)


def test_parallel_containers(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """Six ``ctr run --rm`` at once, each with its own output and exit status."""
    ids = [unique_id(f"par{index}") for index in range(6)]
    with contextlib.ExitStack() as stack:
        runs = [
            stack.enter_context(background_ctr(
                shim_containerd, "run", "--rm", *run_args(runtime, busybox_rootfs), cid,
                "/bin/sh", "-c", f"yes {cid} | head -n 20000; exit {index + 10}",
            ))
            for index, cid in enumerate(ids)
        ]
        results = [finish(run, timeout=120) for run in runs]
    problems = []
    for index, (cid, (status, stdout, stderr)) in enumerate(zip(ids, results, strict=True)):
        expected = f"{cid}\n" * 20000
        if status != index + 10:
            problems.append(f"{cid}: exit status {status}, not {index + 10}; stderr {stderr!r}")
        if stdout != expected:
            problems.append(f"{cid}: stdout {stream_difference(stdout, expected)}")
    assert problems == []
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, ids)
