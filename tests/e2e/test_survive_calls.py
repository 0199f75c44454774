"""Calls the shim must survive (issue 11): an exec id equal to the container id, invalid ids
sent straight to the shim's socket, calls whose caller gives up (a 1 ms deadline, or a
connection closed right after the request), a runc that never returns, and thousands of exec
cycles in one shim.

The direct calls talk ttrpc (``containerd.task.v2.Task``) to the shim of a task containerd
created (``ctr run -d``), as containerd would. runc-v2 (``PYSHIM_E2E_REFERENCE=1``) runs the
tests where its behaviour is the same; the rest are pyshim's own (its id validation, its
``runc_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import psutil
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import Client, Code, ConnectionClosed, DeadlineExceeded, RPCError
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    TASK,
    assert_no_leftovers,
    background_ctr,
    bundle_dir,
    call_shim,
    is_pyshim,
    oci_spec,
    remove_container,
    shim_address,
    task_list,
    task_status,
    unique_id,
    wait_for_status,
    wait_until,
    write_spec,
)
from tests.e2e.containerd import CTR_FIFO_DIR, DEFAULT_RUNC_ROOT, CtrError, PrivateContainerd

#: The type URL containerd gives an exec's process spec.
PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"

#: runc's state directory for the ``default`` namespace (runc-v2's and pyshim's default root).
RUNC_ROOT = DEFAULT_RUNC_ROOT / "default"

#: A bound for one ctr command or one ttrpc call that should take milliseconds: long enough for
#: a loaded machine, short enough that a hang fails the test instead of the suite.
CALL_TIMEOUT = 30.0


def start_sleeper(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, container_id: str,
    *extra: str,
) -> int:
    """``ctr run -d`` a ``sleep 1000``; returns its init pid."""
    containerd.ctr("run", "-d", "--runtime", runtime, *extra, "--rootfs", str(rootfs),
                   container_id, "/bin/sleep", "1000")
    pid, status = task_list(containerd)[container_id]
    assert status == "RUNNING"
    return pid


def process_spec(*args: str) -> any_pb2.Any:
    """An exec's process spec, as containerd sends it."""
    process = {"args": list(args), "env": ["PATH=/bin:/sbin"], "cwd": "/",
               "user": {"uid": 0, "gid": 0}}
    return any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=json.dumps(process).encode())


def code_of(error: RPCError) -> int:
    return error.received_code if error.received_code is not None else int(error.code)


async def call(client: Client, method: str, request: Message, reply_type: type[Any]) -> Any:
    return await client.call(TASK, method, request, reply_type, timeout=CALL_TIMEOUT)


def kill_and_delete(containerd: PrivateContainerd, container_id: str) -> None:
    """SIGKILL the task, wait until STOPPED, delete it and its container."""
    containerd.ctr("task", "kill", "-s", "KILL", container_id)
    wait_for_status(containerd, container_id, "STOPPED")
    containerd.ctr("task", "delete", container_id)
    containerd.ctr("container", "rm", container_id)


def ctr_bounded(containerd: PrivateContainerd, *args: str) -> subprocess.CompletedProcess[str]:
    """``ctr ARGS`` (no check) that fails the test, instead of hanging it, after CALL_TIMEOUT."""
    try:
        return containerd.ctr(*args, check=False, timeout=CALL_TIMEOUT)
    except CtrError as error:
        if error.returncode is None:
            pytest.fail(f"ctr {' '.join(args)} hung (killed after {CALL_TIMEOUT} s)",
                        pytrace=False)
        raise


# ------------------------------------------------------- 1. exec id = container id


def test_exec_id_equal_to_the_container_id_is_a_normal_exec(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """containerd allows an exec id equal to the container id (and ``init``): each is an exec
    like any other, and the container is untouched. (c5cee41: the exec hangs.)"""
    cid = unique_id("same-id")
    try:
        pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        same = ctr_bounded(shim_containerd, "task", "exec", "--exec-id", cid, cid,
                           "/bin/sh", "-c", "exit 5")
        assert same.returncode == 5, same.stderr
        named_init = ctr_bounded(shim_containerd, "task", "exec", "--exec-id", "init", cid,
                                 "/bin/sh", "-c", "exit 6")
        assert named_init.returncode == 6, named_init.stderr
        assert task_list(shim_containerd)[cid] == (pid, "RUNNING")
        shim_containerd.ctr("task", "kill", "-s", "KILL", cid)
        wait_for_status(shim_containerd, cid, "STOPPED")
        deleted = shim_containerd.ctr("task", "delete", cid)
        assert f"task {cid} exit with non-zero exit code 137" in deleted.stderr
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------------ 2. invalid ids


def tree(directory: Path, skip: Path | None = None) -> set[str]:
    """Every path below ``directory`` (not following symlinks), without ``skip``'s subtree."""
    found: set[str] = set()
    for root, dirs, files in os.walk(directory):
        if skip is not None and Path(root) == skip:
            dirs[:] = []
            continue
        found.update(os.path.join(root, name) for name in dirs + files)
    return found


def test_invalid_ids_are_refused_before_any_path_use(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    """Exec ids and a container id that are not containerd identifiers, sent straight to the
    shim: INVALID_ARGUMENT naming the identifier, and nothing written outside the bundle.
    (c5cee41: accepted; ``../x`` puts the exec's pid file next to the bundle.)

    pyshim only: runc-v2 trusts containerd to have validated the ids.
    """
    cid = unique_id("bad-ids")
    escape = f"escape-{cid.rsplit('-', 1)[1]}"
    bad_exec_ids = [f"../{escape}", "a/b", ".", "e" * 77, ""]
    bad_cid = f"../{escape}"
    create_dir = shim_containerd.base_dir / "bad-create"
    create_bundle = create_dir / "bundle"
    create_bundle.mkdir(parents=True)
    write_spec(create_bundle / "config.json",
               oci_spec(shim_containerd, busybox_rootfs, ["/bin/true"]))
    try:
        start_sleeper(shim_containerd, PYSHIM_RUNTIME, busybox_rootfs, cid)
        bundle = bundle_dir(shim_containerd, cid)
        tasks_dir = bundle.parent.parent
        before = tree(tasks_dir, skip=bundle) | tree(create_dir, skip=create_bundle)
        outcomes: dict[str, str] = {}

        async def scenario(client: Client) -> shim_pb2.StateResponse:
            for exec_id in bad_exec_ids:
                try:
                    await call(client, "Exec", shim_pb2.ExecProcessRequest(
                        id=cid, exec_id=exec_id, spec=process_spec("/bin/true")),
                        empty_pb2.Empty)
                except RPCError as error:
                    outcomes[f"exec {exec_id!r}"] = f"{Code(code_of(error)).name}: {error}"
                    continue
                outcomes[f"exec {exec_id!r}"] = "accepted"
                # Accepted (the bug): Start shows where the id leads on disk.
                with contextlib.suppress(RPCError):
                    await call(client, "Start", shim_pb2.StartRequest(id=cid, exec_id=exec_id),
                               shim_pb2.StartResponse)
            try:
                await call(client, "Create", shim_pb2.CreateTaskRequest(
                    id=bad_cid, bundle=str(create_bundle)), shim_pb2.CreateTaskResponse)
                outcomes[f"create {bad_cid!r}"] = "accepted"
            except RPCError as error:
                outcomes[f"create {bad_cid!r}"] = f"{Code(code_of(error)).name}: {error}"
            state: shim_pb2.StateResponse = await call(
                client, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
            return state

        state = call_shim(shim_address(shim_containerd, cid), scenario)
        # The positive: the shim still serves the real container after all of it.
        assert state.status == task_pb2.RUNNING and state.pid > 0
        after = tree(tasks_dir, skip=bundle) | tree(create_dir, skip=create_bundle)
        assert after - before == set(), "written outside the bundle"
        for outside in (bundle.parent / f"{escape}.pid", bundle.parent / escape,
                        bundle.parent / f"{escape}.exit", RUNC_ROOT.parent / escape,
                        create_dir / escape, bundle / "a", bundle / "execs" / "a"):
            assert not outside.exists(), outside
        for what, outcome in outcomes.items():
            assert outcome.startswith("INVALID_ARGUMENT: "), (what, outcomes)
        for exec_id in bad_exec_ids[:-1]:
            # (A too long one may be named by its first 76 characters, as containerd does.)
            assert exec_id[:76] in outcomes[f"exec {exec_id!r}"], outcomes
        assert bad_cid in outcomes[f"create {bad_cid!r}"], outcomes
        kill_and_delete(shim_containerd, cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------- 5. interrupted calls


def runc_state(container_id: str) -> dict[str, Any] | None:
    """``runc state`` of a container in the default namespace's root, None if none."""
    result = subprocess.run(["runc", "--root", str(RUNC_ROOT), "state", container_id],
                            capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False)
    if result.returncode != 0:
        assert "does not exist" in result.stderr, result.stderr
        return None
    state: dict[str, Any] = json.loads(result.stdout)
    return state


def runc_pids(container_id: str) -> set[int]:
    """``runc ps`` of a container: every pid in its cgroup."""
    result = subprocess.run(
        ["runc", "--root", str(RUNC_ROOT), "ps", "--format", "json", container_id],
        capture_output=True, text=True, timeout=CALL_TIMEOUT, check=True)
    return set(json.loads(result.stdout) or [])


#: runc's status words for the shim's task statuses.
RUNC_STATUS = {task_pb2.CREATED: "created", task_pb2.RUNNING: "running",
               task_pb2.STOPPED: "stopped", task_pb2.PAUSED: "paused"}


async def shim_state(address: str, container_id: str, exec_id: str = "") -> Any:
    """State over a fresh connection: the StateResponse, or None if NOT_FOUND."""
    async with await Client.connect(address, timeout=10) as client:
        try:
            return await call(client, "State",
                              shim_pb2.StateRequest(id=container_id, exec_id=exec_id),
                              shim_pb2.StateResponse)
        except RPCError as error:
            if code_of(error) == Code.NOT_FOUND:
                return None
            raise


async def interrupted(
    address: str, interruption: str, method: str, request: Message, reply_type: type[Any]
) -> str:
    """Send one call and give up on it: a 1 ms deadline (``deadline``), or the connection
    closed right after the request was written (``closed``). Returns what the caller saw."""
    client = await Client.connect(address, timeout=10)
    try:
        if interruption == "deadline":
            try:
                await client.call(TASK, method, request, reply_type, timeout=0.001)
            except DeadlineExceeded:
                return "deadline exceeded"
            except RPCError as error:
                return f"{Code(code_of(error)).name}: {error}"
            return "completed"
        pending = asyncio.ensure_future(
            client.call(TASK, method, request, reply_type, timeout=CALL_TIMEOUT))
        # The call's first step writes the request (nothing before it awaits), then waits.
        await asyncio.sleep(0)
        await client.close()
        try:
            await pending
        except ConnectionClosed:
            return "connection closed"
        except RPCError as error:
            return f"{Code(code_of(error)).name}: {error}"
        return "completed"
    finally:
        await client.close()


def run(coroutine: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coroutine

    return asyncio.run(main())


def wait_for_agreement(address: str, container_id: str, what: str) -> None:
    """Wait until the shim's State of the init and ``runc state`` say the same (status and
    pid, or both: no such container); the failure shows what each said last."""
    last: list[tuple[Any, Any]] = []

    def agree() -> bool:
        shim = run(shim_state(address, container_id))
        runc = runc_state(container_id)
        shim_view = None if shim is None else (task_pb2.Status.Name(shim.status), shim.pid)
        runc_view = None if runc is None else (runc["status"], runc["pid"])
        last[:] = [(shim_view, runc_view)]
        if shim is None or runc is None:
            return shim is None and runc is None
        return bool(RUNC_STATUS.get(shim.status) == runc["status"] and shim.pid == runc["pid"])

    try:
        wait_until(agree, what=f"shim and runc agree on {container_id} after {what}")
    except AssertionError as error:
        raise AssertionError(f"{error}: (shim, runc) said {last}") from None


def started_anyway(address: str, container_id: str, exec_id: str = "") -> None:
    """If the interrupted Start left the process CREATED (it never ran), start it now; a
    "running" refusal means the interrupted Start finished meanwhile."""
    state = run(shim_state(address, container_id, exec_id))
    if state is not None and state.status == task_pb2.CREATED:
        async def start(client: Client) -> None:
            try:
                await call(client, "Start",
                           shim_pb2.StartRequest(id=container_id, exec_id=exec_id),
                           shim_pb2.StartResponse)
            except RPCError as error:
                assert "running" in error.message, error

        call_shim(address, start)


def deleted_anyway(address: str, container_id: str, exec_id: str = "") -> None:
    """If the interrupted Delete left the process (STOPPED), delete it now; NOT_FOUND means
    the interrupted Delete finished meanwhile."""
    state = run(shim_state(address, container_id, exec_id))
    if state is None:
        return
    assert state.status == task_pb2.STOPPED, state

    async def delete(client: Client) -> None:
        try:
            await call(client, "Delete", shim_pb2.DeleteRequest(id=container_id, exec_id=exec_id),
                       shim_pb2.DeleteResponse)
        except RPCError as error:
            assert code_of(error) == Code.NOT_FOUND, error

    call_shim(address, delete)


@pytest.mark.parametrize("interruption", ["deadline", "closed"])
def test_interrupted_calls_leave_the_shim_consistent(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path, interruption: str
) -> None:
    """Start (an init), Start (an exec) and Delete (an exec, an init) whose caller gives up
    mid-call: afterwards the shim's State agrees with runc's, the start events are published,
    everything can be killed and deleted, and the shim exits after the last delete.

    The second container (``other``) is created with a direct Create in the same shim (ctr
    cannot create a task without starting it). (c5cee41: an interrupted Start leaves the shim
    saying CREATED while runc says running, for good.)

    pyshim only: runc-v2 fails it too (its connection closes at the Kill/Wait of the exec
    whose Start was interrupted).
    """
    runtime = PYSHIM_RUNTIME
    cid = unique_id("cut")
    other = unique_id("cut-other")
    bundle = shim_containerd.base_dir / f"bundle-{other}"
    bundle.mkdir()
    write_spec(bundle / "config.json",
               oci_spec(shim_containerd, busybox_rootfs, ["/bin/sleep", "1000"],
                        container_id=other))
    events = shim_containerd.subscribe_events()
    shim_pid = 0
    stdout = ""
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        address = shim_address(shim_containerd, cid)
        stdout = run(shim_state(address, cid)).stdout

        async def create(client: Client) -> int:
            connected = await call(client, "Connect", shim_pb2.ConnectRequest(id=cid),
                                   shim_pb2.ConnectResponse)
            await call(client, "Create", shim_pb2.CreateTaskRequest(id=other, bundle=str(bundle)),
                       shim_pb2.CreateTaskResponse)
            await call(client, "Exec", shim_pb2.ExecProcessRequest(
                id=cid, exec_id="e1", spec=process_spec("/bin/sleep", "1000")), empty_pb2.Empty)
            return int(connected.shim_pid)

        shim_pid = call_shim(address, create)
        seen: dict[str, str] = {}

        # Start of an init.
        seen["start init"] = run(interrupted(address, interruption, "Start",
                                             shim_pb2.StartRequest(id=other),
                                             shim_pb2.StartResponse))
        wait_for_agreement(address, other, f"Start ({seen['start init']})")
        started_anyway(address, other)
        wait_for_agreement(address, other, "Start again")
        running = runc_state(other)
        assert running is not None and running["status"] == "running", running
        events.wait_for(lambda line: "/tasks/start " in line and f'"{other}"' in line, 20)

        # Start of an exec.
        seen["start exec"] = run(interrupted(address, interruption, "Start",
                                             shim_pb2.StartRequest(id=cid, exec_id="e1"),
                                             shim_pb2.StartResponse))
        started_anyway(address, cid, "e1")

        def exec_running() -> bool:
            state = run(shim_state(address, cid, "e1"))
            return bool(state is not None and state.status == task_pb2.RUNNING
                        and state.pid in runc_pids(cid))

        wait_until(exec_running, what="exec e1 running, in runc's pids of the container")
        events.wait_for(lambda line: "/tasks/exec-started " in line and '"e1"' in line, 20)

        # Delete of an exec, then of an init, both stopped first.
        async def kill_and_wait(client: Client) -> None:
            for container_id, exec_id in ((cid, "e1"), (other, "")):
                await call(client, "Kill", shim_pb2.KillRequest(
                    id=container_id, exec_id=exec_id, signal=signal.SIGKILL), empty_pb2.Empty)
                await call(client, "Wait", shim_pb2.WaitRequest(id=container_id,
                                                                exec_id=exec_id),
                           shim_pb2.WaitResponse)

        call_shim(address, kill_and_wait)
        seen["delete exec"] = run(interrupted(address, interruption, "Delete",
                                              shim_pb2.DeleteRequest(id=cid, exec_id="e1"),
                                              shim_pb2.DeleteResponse))
        deleted_anyway(address, cid, "e1")
        assert run(shim_state(address, cid, "e1")) is None
        seen["delete init"] = run(interrupted(address, interruption, "Delete",
                                              shim_pb2.DeleteRequest(id=other),
                                              shim_pb2.DeleteResponse))
        wait_for_agreement(address, other, f"Delete ({seen['delete init']})")
        deleted_anyway(address, other)
        assert run(shim_state(address, other)) is None and runc_state(other) is None, seen

        kill_and_delete(shim_containerd, cid)
        wait_until(lambda: not psutil.pid_exists(shim_pid)
                   or psutil.Process(shim_pid).status() == psutil.STATUS_ZOMBIE,
                   what=f"shim {shim_pid} exited after the last delete ({seen})")
    finally:
        events.close()
        remove_container(shim_containerd, cid)
        subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", other],
                       capture_output=True, check=False)
        # ctr task delete removes it; a shim that died leaves it to us.
        if stdout and Path(stdout).parent.parent == CTR_FIFO_DIR:
            shutil.rmtree(Path(stdout).parent, ignore_errors=True)
    assert_no_leftovers(shim_containerd, [cid, other])


# --------------------------------------------------------------------- 6. a hung runc


def hanging_runc(directory: Path) -> tuple[Path, Path]:
    """A runc wrapper that runs the real runc except for ``pause``, where it records its pid
    and ``exec``s a long sleep (so a kill reaches the sleeping process itself). Returns
    (wrapper, pid file)."""
    real = shutil.which("runc")
    assert real is not None
    pid_file = directory / "pause.pid"
    wrapper = directory / "runc-hangs-on-pause"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  if [ "$arg" = pause ]; then echo $$ > {pid_file}; exec sleep 1000; fi\n'
        "done\n"
        f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, pid_file


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def test_a_runc_that_hangs_is_killed_after_runc_timeout(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    """``runc pause`` never returns: the pause fails after ``runc_timeout`` with an error
    naming it, the shim answers State meanwhile, the hung runc is killed, and the container
    can still be killed and deleted. (c5cee41: no limit, ``ctr task pause`` hangs.)

    pyshim only (``runc_timeout`` is pyshim's). runc_timeout is 5 s rather than 2 so that the
    State below is surely asked while the pause is pending, even on a loaded machine.
    """
    cid = unique_id("hung-runc")
    tools = shim_containerd.base_dir / "hung-runc"
    tools.mkdir()
    wrapper, pid_file = hanging_runc(tools)
    config = tools / "runtime.toml"
    config.write_text(f'binary_name = "{wrapper}"\nrunc_timeout = 5\n')
    hung_pid: int | None = None
    try:
        start_sleeper(shim_containerd, PYSHIM_RUNTIME, busybox_rootfs, cid,
                      "--runtime-config-path", str(config))
        address = shim_address(shim_containerd, cid)
        with background_ctr(shim_containerd, "task", "pause", cid) as pause:
            wait_until(lambda: read_pid(pid_file) is not None, what="runc pause started")
            hung_pid = read_pid(pid_file)
            assert hung_pid is not None and psutil.pid_exists(hung_pid)
            # Answered while the pause is pending (RUNNING, or PAUSING: it is in flight).
            state = run(shim_state(address, cid))
            assert state is not None and state.status in (task_pb2.RUNNING, task_pb2.PAUSING)
            assert task_status(shim_containerd, cid) in ("RUNNING", "PAUSING")
            assert pause.process.poll() is None, "the pause returned before State answered"
            try:
                status, _, stderr = pause.finish(CALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"ctr task pause still hangs after {CALL_TIMEOUT} s "
                            "(runc is never time-limited)", pytrace=False)
        assert status != 0
        assert "did not finish within" in stderr and cid in stderr, stderr
        pid = hung_pid
        wait_until(lambda: not psutil.pid_exists(pid), what=f"hung runc {pid} gone")
        assert task_status(shim_containerd, cid) == "RUNNING"
        kill_and_delete(shim_containerd, cid)
    finally:
        if hung_pid is not None and psutil.pid_exists(hung_pid):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(hung_pid).name() == "sleep":
                    os.kill(hung_pid, signal.SIGKILL)
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------ 7. many exec cycles


#: Exec cycles (Exec, Start, Wait, Delete) after the warm-up, and how many run at once.
CYCLES = 2000
WARM_UP = 20
CONCURRENCY = 4


def test_thousands_of_exec_cycles_leak_nothing(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """2,000 exec create/start/wait/delete cycles in one shim: its open fds and threads are
    back where they were after a warm-up, and no exec file is left in the bundle. (c5cee41
    passes: it keeps no per-exec file and leaks no fd or thread here; this guards the new
    engine's exit records and per-process operations.)"""
    cid = unique_id("cycles")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        bundle = bundle_dir(shim_containerd, cid)
        spec = process_spec("/bin/true")

        async def cycle(client: Client, exec_id: str) -> None:
            await call(client, "Exec", shim_pb2.ExecProcessRequest(id=cid, exec_id=exec_id,
                                                                   spec=spec), empty_pb2.Empty)
            await call(client, "Start", shim_pb2.StartRequest(id=cid, exec_id=exec_id),
                       shim_pb2.StartResponse)
            waited = await call(client, "Wait", shim_pb2.WaitRequest(id=cid, exec_id=exec_id),
                                shim_pb2.WaitResponse)
            assert waited.exit_status == 0, (exec_id, waited)
            await call(client, "Delete", shim_pb2.DeleteRequest(id=cid, exec_id=exec_id),
                       shim_pb2.DeleteResponse)

        async def cycles(client: Client, prefix: str, count: int) -> None:
            queue = iter(range(count))

            async def worker() -> None:
                for number in queue:
                    await cycle(client, f"{prefix}{number}")

            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(worker())

        async def scenario(client: Client) -> tuple[tuple[int, int], tuple[int, int]]:
            connected = await call(client, "Connect", shim_pb2.ConnectRequest(id=cid),
                                   shim_pb2.ConnectResponse)
            shim = psutil.Process(connected.shim_pid)
            await cycles(client, "warm", WARM_UP)
            before = (shim.num_fds(), shim.num_threads())
            await cycles(client, "c", CYCLES)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                after = (shim.num_fds(), shim.num_threads())
                settled = after[0] <= before[0] and (
                    after[1] <= before[1] or not is_pyshim(runtime))
                if settled or loop.time() > deadline:
                    return before, after
                await asyncio.sleep(0.1)

        before, after = call_shim(shim_address(shim_containerd, cid), scenario)
        assert after[0] <= before[0], f"open fds {before[0]} -> {after[0]}"
        if is_pyshim(runtime):
            # (Go's runtime starts threads as it sees fit: runc-v2's count is no measure.)
            assert after[1] <= before[1], f"threads {before[1]} -> {after[1]}"
        execs = bundle / "execs"
        assert not execs.exists() or sorted(os.listdir(execs)) == []
        kill_and_delete(shim_containerd, cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])
