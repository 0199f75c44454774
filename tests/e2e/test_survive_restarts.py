"""Containers survive containerd crashing (issue 11): containerd is SIGKILLed (by PID, nothing
else) and restarted on the same state while its tasks run, exit and write output.

* ``test_tasks_survive_containerd_kills_and_exits_while_down_are_reported``: 20 containers;
  containerd killed and restarted twice: every task is still RUNNING with the same pid. Then 10
  of them print 256 KiB nobody reads and exit (each with its own status) while containerd is
  down for 30 s: after the restart, with containerd 1.6, ``ctr task ls`` shows them STOPPED,
  ``ctr task delete`` reports each status, and (pyshim only) every shim's ``/tasks/exit``,
  retried while containerd was away, reaches the restarted containerd; containerd 1.7 deletes
  those tasks itself as it loads their shims (see ``deletes_tasks_exited_while_down``), and
  their shims exit. The sleepers run on, with the same pids, on both.
* ``test_cri_log_survives_containerd_kill_without_stalling_the_container``: a CRI pod's
  container prints a numbered line every 10 ms while containerd (which writes the CRI log) is
  dead for 20 s: the log ends up with every number exactly once, in order, and the container's
  own clock shows it never waited on its output.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from pyshim.image import build_image_archive
from tests import cri_log_reader
from tests.e2e.conftest import (
    BUSYBOX,
    SHIM_BIN_DIR,
    SHIM_TOOLS,
    assert_no_leftovers,
    forkserver_env,
    is_pyshim,
    remove_container,
    require_e2e,
    shim_path_env,
    shim_processes,
    task_list,
    unique_id,
    wait_until,
)
from tests.e2e.containerd import (
    DEFAULT_DISABLED_PLUGINS,
    EventSubscription,
    PrivateContainerd,
    parse_event_line,
)
from tests.e2e.containerd_versions import containerd_behaviour
from tests.e2e.cri import api_pb2 as api
from tests.e2e.cri import kube
from tests.e2e.cri.client import CriClient, rpc_error_text
from tests.e2e.test_cri import (
    K8S_NAMESPACE,
    PAUSE_COMMAND,
    PAUSE_IMAGE,
    cgroup_leftovers,
    cri_test_config,
)

# ------------------------------------------------------------------ tasks across kills

#: Containers of the restart test; the first :data:`EXITING` of them exit while containerd is
#: down, the others sleep.
CONTAINERS = 20
EXITING = 10
#: How long containerd stays dead while the containers exit (the issue's scenario).
DOWN_SECONDS = 30.0
#: Parallel ``ctr run -d`` calls: 20 in a row take long on two shared cores, 20 at once
#: overload them; 4 keeps both cores busy.
PARALLEL_RUNS = 4
#: A shim retries an event that could not be published with back-off up to 5 s, so every
#: exit recorded while containerd was down arrives well within this after the restart.
EXIT_EVENTS_WITHIN = 30.0


def exit_status_of(index: int) -> int:
    """The distinct exit status of exiting container ``index`` (10, 11, ...)."""
    return 10 + index


#: What each exiting container prints just before it exits: four times what the FIFO (64 KiB)
#: holds. ``ctr run -d`` has exited long before, so nobody reads its FIFOs: a shim that waits
#: for a reader keeps the container from exiting (runc-v2 does, so it prints nothing there).
EXIT_OUTPUT_BYTES = 256 * 1024


def waiter_script(status: int, output_bytes: int) -> str:
    """Waits for ``/go`` (made by the test in the shared rootfs), prints ``output_bytes``
    bytes, then exits with ``status``."""
    return (f"while [ ! -e /go ]; do sleep 0.3; done; head -c {output_bytes} /dev/zero; "
            f"exit {status}")


def run_detached(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, container_id: str, *argv: str
) -> None:
    containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs", str(rootfs), container_id,
                   *argv, timeout=120)


def exit_events(lines: list[str]) -> dict[str, int]:
    """{container id: exit_status} of the ``/tasks/exit`` events of init processes among
    ``ctr events`` lines (``exit_status`` is left out of the JSON when 0)."""
    found: dict[str, int] = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            event = parse_event_line(line)
            if event.topic == "/tasks/exit" and event.event is not None:
                container_id = event.event.get("container_id")
                if container_id is not None and event.event.get("id") == container_id:
                    found[str(container_id)] = int(event.event.get("exit_status", 0))
    return found


def test_tasks_survive_containerd_kills_and_exits_while_down_are_reported(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    containerd = shim_containerd
    token = secrets.token_hex(3)
    ids = [f"survive-{index}-{token}" for index in range(CONTAINERS)]
    exiting, sleeping = ids[:EXITING], ids[EXITING:]
    expected = {cid: exit_status_of(index) for index, cid in enumerate(exiting)}
    output_bytes = EXIT_OUTPUT_BYTES if is_pyshim(runtime) else 0
    shims: list[psutil.Process] = []
    try:
        with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
            runs = [
                pool.submit(run_detached, containerd, runtime, busybox_rootfs, cid,
                            "/bin/sh", "-c", waiter_script(expected[cid], output_bytes))
                for cid in exiting
            ] + [
                pool.submit(run_detached, containerd, runtime, busybox_rootfs, cid,
                            "/bin/sleep", "1000")
                for cid in sleeping
            ]
            for run in runs:
                run.result()
        before = task_list(containerd)
        assert {cid: before[cid][1] for cid in ids} == dict.fromkeys(ids, "RUNNING"), before
        pids = {cid: before[cid][0] for cid in ids}
        shims = shim_processes(containerd)
        assert shims, "no shim process found"
        exited_shims = [shim for cid in exiting for shim in shim_processes(containerd, cid)]
        assert len(exited_shims) == EXITING, exited_shims

        # ---- Killed and restarted twice: every task still runs, with the same pid.
        for _ in range(2):
            containerd.kill_daemon()
            containerd.start()
            after = task_list(containerd)
            assert {cid: after.get(cid) for cid in ids} == {
                cid: (pid, "RUNNING") for cid, pid in pids.items()
            }, after
            assert all(psutil.pid_exists(pid) for pid in pids.values())

        # ---- Half of them exit while containerd is dead for DOWN_SECONDS.
        containerd.kill_daemon()
        down_since = time.monotonic()
        subscription = containerd.subscribe_events_before_start()
        processes = {cid: psutil.Process(pids[cid]) for cid in exiting}
        (busybox_rootfs / "go").touch()
        wait_until(lambda: not any(alive(p) for p in processes.values()), DOWN_SECONDS,
                   "the exiting containers' processes are gone while containerd is down")
        assert all(alive(psutil.Process(pids[cid])) for cid in sleeping)
        time.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down_since)))
        # The shims may forward only once ctr events is subscribed: what reaches containerd
        # before that is not shown to a subscriber (lost to the test, not to containerd).
        containerd.hold_shim_events()
        containerd.start()
        containerd.sync_events(subscription)
        containerd.release_shim_events()

        tasks = task_list(containerd)
        assert {cid: tasks.get(cid) for cid in sleeping} == {
            cid: (pids[cid], "RUNNING") for cid in sleeping
        }, tasks
        if containerd_behaviour().deletes_tasks_exited_while_down:
            # 1.7 deleted them while loading its shims, before it served a client: their
            # tasks are gone, and so are their shims (nothing left running for them).
            assert not set(tasks) & set(exiting), tasks
            wait_until(lambda: not any(alive(shim) for shim in exited_shims), 30,
                       "the shims of the deleted tasks exit")
        else:
            # Every exit, retried by its shim while containerd was away, reaches the new one.
            # (Not runc-v2's: containerd 1.6's shim publisher gives up after five attempts,
            # about 15 s, so after 30 s down there is nothing left to deliver; observed.)
            if is_pyshim(runtime):
                check_exit_events(subscription, expected, sleeping)
            assert {cid: tasks.get(cid) for cid in exiting} == {
                cid: (pids[cid], "STOPPED") for cid in exiting
            }, tasks
            for cid, status in expected.items():
                deleted = containerd.ctr("task", "delete", cid)
                assert f"task {cid} exit with non-zero exit code {status}" in deleted.stderr, (
                    cid, deleted.stderr)
        for cid in exiting:
            containerd.ctr("container", "rm", cid)
        for cid in sleeping:
            containerd.ctr("task", "rm", "--force", cid)
            containerd.ctr("container", "rm", cid)
    finally:
        if not containerd.running:  # failed while it was down: the clean-up needs it
            containerd.start()
        for cid in ids:
            remove_container(containerd, cid)
    # The shims were started under the first daemon's subreaper, which assert_no_leftovers
    # does not look at: wait for them by PID.
    wait_until(lambda: not any(alive(shim) for shim in shims), 30, "every shim exits")
    assert_no_leftovers(containerd, ids)


def check_exit_events(
    subscription: EventSubscription, expected: dict[str, int], sleeping: list[str]
) -> None:
    """Within EXIT_EVENTS_WITHIN, a /tasks/exit with the right status for every exited
    container of ``expected``, and none for the ``sleeping`` ones."""
    received: dict[str, int] = {}

    def all_exits_arrived() -> bool:
        received.update(exit_events(subscription.lines()))
        return set(expected) <= set(received)

    try:
        wait_until(all_exits_arrived, EXIT_EVENTS_WITHIN, "a /tasks/exit per exited task")
    except AssertionError as error:
        missing = sorted(set(expected) - set(received))
        raise AssertionError(f"{error}; missing: {missing}; lines: "
                             f"{subscription.lines()}") from None
    assert {cid: received[cid] for cid in expected} == expected
    assert not set(received) & set(sleeping), received


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- a CRI log across a kill

#: How long containerd (the CRI log's writer) stays dead while the container prints.
CRI_DOWN_SECONDS = 20.0
#: The container prints a line every this many microseconds (``usleep``).
PRINT_EVERY_US = 10_000
#: Padding per line: 100 lines/s of ~220 bytes are ~440 KB over CRI_DOWN_SECONDS, far more
#: than the pipe and FIFO between the container and containerd hold (64 KiB each): a shim
#: that does not take the output off them while nobody reads blocks the container.
PADDING = "x" * 200
#: The longest the container may go between two lines by its own clock (the issue's bound:
#: it must never wait on its output). A container that blocks on a full pipe for the rest of
#: the 20 s is far above it. Scheduling alone can delay a process on a loaded two-core box
#: too; /proc/uptime, the clock the container reads, ticks in 10 ms steps.
MAX_GAP_SECONDS = 0.100
#: The script of the counter container: "<number> <uptime> <padding>" per line; it reads the
#: clock with the shell's own ``read`` (no fork) from /proc/uptime (busybox's date has no %N).
COUNTER_SCRIPT = (
    f"pad={PADDING}; i=0; while true; do read up rest </proc/uptime; "
    f'echo "$i $up $pad"; i=$((i+1)); usleep {PRINT_EVERY_US}; done'
)


@dataclass
class CriHost:
    containerd: PrivateContainerd
    client: CriClient
    log_root: Path
    cgroup_parent: str


@pytest.fixture
def cri_host(tmp_path: Path) -> Iterator[CriHost]:
    """A private containerd with CRI on and the deploy snippet's handlers (as in test_cri.py,
    fork-server on), both busybox images imported; containerd's log is copied to
    ``tmp_path`` at the end."""
    require_e2e((*SHIM_TOOLS, "runc"), (BUSYBOX, str(SHIM_BIN_DIR / "containerd-shim-pyshim-v1")))
    base_dir = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    for directory in ("cni/bin", "cni/conf", "images", "logs"):
        (base_dir / directory).mkdir(parents=True)
    containerd = PrivateContainerd(
        base_dir,
        extra_config=cri_test_config(base_dir),
        disabled_plugins=[name for name in DEFAULT_DISABLED_PLUGINS if name != kube.CRI_PLUGIN],
        env={"PATH": shim_path_env(), **forkserver_env(True)},
    )
    client: CriClient | None = None
    try:
        containerd.start(timeout=60)
        [workload_name] = {kube.normalize_image(c.image) for c in kube.load_pod().containers}
        pause = build_image_archive(base_dir / "images" / "pause.tar", PAUSE_IMAGE,
                                    entrypoint=PAUSE_COMMAND[:1], cmd=PAUSE_COMMAND[1:])
        workload = build_image_archive(base_dir / "images" / "workload.tar", workload_name,
                                       cmd=["sh"])
        for archive in (pause, workload):
            containerd.ctr("images", "import", str(archive.path), namespace=K8S_NAMESPACE)
        client = connected = CriClient(str(containerd.address))
        wait_until(
            lambda: all(connected.image_status(a.name) is not None for a in (pause, workload)),
            60, "CRI knows the imported images",
        )
        yield CriHost(containerd, connected, base_dir / "logs",
                      f"/pyshim-survive-{secrets.token_hex(4)}")
    finally:
        try:
            if client is not None:
                client.close()
            if containerd.log_path.exists():
                shutil.copyfile(containerd.log_path, tmp_path / "containerd.log")
        finally:
            containerd.stop()


def host_uptime() -> float:
    """/proc/uptime's first field: the clock the counter container reads."""
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass(frozen=True)
class CounterLine:
    number: int
    uptime: float


def counter_lines(path: Path) -> list[CounterLine]:
    """The counter's complete lines in the CRI log at ``path`` (strictly parsed)."""
    if not path.exists():
        return []
    stdout = cri_log_reader.streams(cri_log_reader.read(path))["stdout"]
    lines = []
    for text in stdout.decode().splitlines():
        number, uptime, padding = text.split(" ")
        assert padding == PADDING, text
        lines.append(CounterLine(int(number), float(uptime)))
    return lines


def test_cri_log_survives_containerd_kill_without_stalling_the_container(
    cri_host: CriHost, record_property: Callable[[str, object], None],
) -> None:
    containerd, client = cri_host.containerd, cri_host.client
    pod = kube.load_pod()
    sandbox = kube.sandbox_config(pod, unique_id("uid"), cri_host.log_root,
                                  cri_host.cgroup_parent)
    Path(sandbox.log_directory).mkdir(parents=True)  # the kubelet makes it
    counter = kube.Container("counter", pod.containers[0].image, ["sh", "-c"], [COUNTER_SCRIPT])
    log = Path(sandbox.log_directory) / "counter" / "0.log"
    sandbox_id: str | None = None
    ids: list[str] = []
    shims: list[psutil.Process] = []
    try:
        sandbox_id = client.run_pod_sandbox(sandbox, "pyshim")
        ids.append(sandbox_id)
        container_id = client.create_container(
            sandbox_id, kube.container_config(pod, counter, sandbox), sandbox)
        ids.append(container_id)
        client.start_container(container_id)
        shims = shim_processes(containerd)
        assert len(shims) == 1, shims
        wait_until(lambda: len(counter_lines(log)) >= 100, 30, f"counter lines in {log}")

        containerd.kill_daemon()
        time.sleep(CRI_DOWN_SECONDS)
        containerd.start(timeout=60)
        restarted_at = host_uptime()
        status = recovered_status(client, container_id)
        assert status.state == api.CONTAINER_RUNNING, status

        # Let it print for a while after the restart: lines stamped 2 s after it.
        seen: list[list[CounterLine]] = [[]]

        def beyond_restart() -> bool:
            seen[0] = counter_lines(log)
            return bool(seen[0]) and seen[0][-1].uptime > restarted_at + 2
        try:
            wait_until(beyond_restart, 60, f"counter lines after the restart in {log}")
        except AssertionError as error:
            last = seen[0][-1] if seen[0] else None
            raise AssertionError(f"{error}; {len(seen[0])} lines, the last {last}, "
                                 f"restart at uptime {restarted_at}") from None
        client.stop_container(container_id, 1)
        lines = counter_lines(log)

        numbers = [line.number for line in lines]
        assert numbers == list(range(len(numbers))), first_disorder(numbers)
        gaps = [(b.uptime - a.uptime, a) for a, b in itertools.pairwise(lines)]
        worst, before = max(gaps, key=lambda gap: gap[0])
        print(f"counter: {len(lines)} lines, longest gap {worst:.2f} s after line {before.number}")
        record_property("max_gap_seconds", round(worst, 3))
        assert worst < MAX_GAP_SECONDS, (
            f"the container went {worst:.2f} s without printing after line {before.number} "
            f"(uptime {before.uptime}); containerd was killed and restarted at {restarted_at}")

        client.remove_container(container_id)
        client.stop_pod_sandbox(sandbox_id)
        client.remove_pod_sandbox(sandbox_id)
        sandbox_id = None
    finally:
        if not containerd.running:  # failed while it was down: the clean-up needs it
            containerd.start(timeout=60)
        if sandbox_id is not None:
            for call in (client.stop_pod_sandbox, client.remove_pod_sandbox):
                try:
                    call(sandbox_id)
                except Exception as error:
                    print(f"cleanup: {call.__name__}({sandbox_id}): {rpc_error_text(error)}")
    wait_until(lambda: not any(alive(shim) for shim in shims), 30, "the pod's shim exits")
    assert_no_leftovers(containerd, ids, namespace=K8S_NAMESPACE)
    problems: list[str] = []

    def clean() -> bool:
        problems[:] = cgroup_leftovers(ids, cri_host.cgroup_parent)
        return not problems

    wait_until(clean, 20, f"k8s.io cgroups gone: {problems}")


def recovered_status(client: CriClient, container_id: str) -> api.ContainerStatus:
    """The container's CRI status once the restarted CRI plugin answers (it says "server is
    not initialized yet" while it recovers its pods and containers)."""
    found: list[api.ContainerStatus] = []
    errors: list[str] = []

    def answered() -> bool:
        try:
            found.append(client.container_status(container_id).status)
        except Exception as error:
            errors[:] = [rpc_error_text(error)]
            return False
        return True

    try:
        wait_until(answered, 60, "CRI answers after the restart")
    except AssertionError as error:
        raise AssertionError(f"{error}; last error: {errors}") from None
    return found[-1]


def first_disorder(numbers: list[int]) -> str:
    """Where ``numbers`` first differs from 0, 1, 2, ... (for the assertion message)."""
    for expected, number in enumerate(numbers):
        if number != expected:
            return (f"line {expected} holds {number}; around it: "
                    f"{numbers[max(0, expected - 3):expected + 4]}; {len(numbers)} lines")
    return f"{len(numbers)} lines in order"
