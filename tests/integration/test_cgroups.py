"""Real cgroups on this host: finding a process's cgroup, its Metrics, and OOM events on asyncio
and uvloop loops. Test cgroups and processes are removed/killed (by PID) whatever happens."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from pyshim.cgroup_metrics import metrics
from pyshim.cgroups import (
    Cgroup,
    CgroupGone,
    CgroupMode,
    CgroupNotFound,
    cgroup_of_pid,
    host_mode,
)
from pyshim.oom import OOMWatcher
from pyshim.protos.cgroups.v1 import metrics_pb2 as v1

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ["memory", "cpu", "cpuacct", "pids", "blkio"]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}

needs_v1_root = pytest.mark.skipif(
    os.geteuid() != 0 or not (ROOT / "memory").is_dir() or host_mode() is not CgroupMode.V1,
    reason="needs root on a cgroup v1 (or hybrid) host",
)


def fstype_of(path: Path) -> str | None:
    with open("/proc/self/mountinfo") as info:
        for line in info:
            head, _, tail = line.partition(" - ")
            if head.split()[4] == str(path):
                fstype: str = tail.split()[0]
                return fstype
    return None


def test_host_mode_agrees_with_the_mount_table() -> None:
    expected = CgroupMode.V2 if fstype_of(ROOT) == "cgroup2" else CgroupMode.V1
    assert host_mode() is expected
    unified = ROOT / "unified"
    if fstype_of(unified) == "cgroup2":
        assert host_mode(str(unified)) is CgroupMode.V2
    with pytest.raises(OSError):
        host_mode("/nonexistent/cgroup")


def test_cgroup_of_a_missing_process_is_not_found() -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(CgroupNotFound, match=str(process.pid)):
        cgroup_of_pid(process.pid, mode=CgroupMode.V1)


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll until condition() holds; a generous limit, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


class Sandbox:
    """Child cgroups in each v1 controller, and the processes started in them."""

    def __init__(self) -> None:
        self.name = f"pyshim-test-{secrets.token_hex(4)}"
        self.dirs: dict[str, Path] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        for controller in CONTROLLERS:
            if (ROOT / controller).is_dir() and controller not in self.dirs:
                directory = ROOT / controller / self.name
                directory.mkdir()
                self.dirs[controller] = directory

    def start(self, *argv: str, hold: bool = False) -> subprocess.Popen[bytes]:
        """Run argv inside the cgroups; with `hold`, only after a line arrives on stdin."""
        joins = " ".join(shlex.quote(str(d / "cgroup.procs")) for d in self.dirs.values())
        script = f'for f in {joins}; do echo $$ > "$f" || exit 1; done; echo ready; '
        script += 'read line; exec "$@"' if hold else 'exec "$@"'
        process = subprocess.Popen(
            ["/bin/sh", "-c", script, "sh", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.processes.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        return process

    def write(self, controller: str, name: str, value: str) -> None:
        (self.dirs[controller] / name).write_text(value)

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    def remove(self) -> None:
        self.kill()
        for directory in self.dirs.values():
            for _ in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.05)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    try:
        yield box
    finally:
        box.remove()


def blocked_in_sleep(pid: int) -> None:
    """Wait until `pid` is `sleep`, blocked: its CPU time so far has then been accounted."""
    deadline = time.monotonic() + 10
    while True:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.startswith(f"{pid} (sleep) S "):
            return
        assert time.monotonic() < deadline, stat
        time.sleep(0.01)


@needs_v1_root
def test_cgroup_and_metrics_of_a_contained_process(sandbox: Sandbox) -> None:
    process = sandbox.start("sleep", "600")
    blocked_in_sleep(process.pid)
    cgroup = cgroup_of_pid(process.pid)
    assert cgroup.mode is CgroupMode.V1
    for controller, directory in sandbox.dirs.items():
        assert cgroup.paths[controller] == str(directory)

    stats = metrics(cgroup)
    assert stats.type_url == "io.containerd.cgroups.v1.Metrics"
    m = v1.Metrics.FromString(stats.value)
    assert m.pids.current == 1
    assert m.pids.limit == 0  # "max"
    assert m.memory.usage.usage > 0
    assert m.memory.usage.limit >= 1 << 60  # unlimited
    assert m.cpu.usage.total > 0
    assert len(m.cpu.usage.per_cpu) == os.cpu_count()
    assert m.memory_oom_control.oom_kill == 0

    sandbox.write("pids", "pids.max", "50")
    assert v1.Metrics.FromString(metrics(cgroup).value).pids.limit == 50

    sandbox.remove()
    with pytest.raises(CgroupGone):
        metrics(cgroup)
    with pytest.raises(CgroupNotFound):
        cgroup_of_pid(process.pid)


def limit_memory(sandbox: Sandbox, limit: int) -> None:
    sandbox.write("memory", "memory.limit_in_bytes", str(limit))
    # Without a memsw limit the kernel would swap (where there is swap) instead of OOM-killing.
    if (sandbox.dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
        sandbox.write("memory", "memory.memsw.limit_in_bytes", str(limit))


@needs_v1_root
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_oom_kill_is_reported(sandbox: Sandbox, loop_name: str) -> None:
    limit_memory(sandbox, 16 << 20)
    hog = sandbox.start(sys.executable, "-c", "b = b'x' * (64 << 20)", hold=True)
    cgroup = cgroup_of_pid(hog.pid)

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        watcher = OOMWatcher(loop)
        fired: asyncio.Future[None] = loop.create_future()
        keys: list[str] = []

        def on_oom(key: str) -> None:
            keys.append(key)
            if not fired.done():
                fired.set_result(None)

        try:
            watcher.add("ctr-1", cgroup, on_oom)
            assert "ctr-1" in watcher
            assert hog.stdin is not None
            hog.stdin.write(b"go\n")
            hog.stdin.flush()
            await asyncio.wait_for(fired, timeout=20)
            return keys
        finally:
            watcher.close()
            assert len(watcher) == 0

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        keys = runner.run(scenario())
    assert keys[0] == "ctr-1"
    assert hog.wait(timeout=20) == -signal.SIGKILL
    m = v1.Metrics.FromString(metrics(cgroup).value)
    assert m.memory_oom_control.oom_kill >= 1
    assert m.memory.usage.max >= 15 << 20


@needs_v1_root
def test_an_oom_kill_before_the_watch_is_reported(sandbox: Sandbox) -> None:
    # As a container OOM-killed while `runc start` is still returning: no event will come.
    limit_memory(sandbox, 16 << 20)
    keeper = sandbox.start("sleep", "600")  # keeps the cgroup's path known once the hog is gone
    hog = sandbox.start(sys.executable, "-c", "b = b'x' * (64 << 20)")
    assert hog.wait(timeout=20) == -signal.SIGKILL
    cgroup = cgroup_of_pid(keeper.pid)

    async def scenario() -> tuple[list[str], list[str]]:
        watcher = OOMWatcher(asyncio.get_running_loop())
        found: list[str] = []
        checked: list[str] = []
        try:
            watcher.add("ctr-early", cgroup, found.append)
            await eventually(lambda: found != [])
            # As at the container's exit, before the loop ran: notified once, not again later.
            watcher.add("ctr-checked", cgroup, checked.append)
            watcher.check("ctr-checked")
            assert checked == ["ctr-checked"]
            await asyncio.sleep(0)  # the look add() scheduled runs now: nothing new
            watcher.check("ctr-checked")
            return found, checked
        finally:
            watcher.close()

    assert asyncio.run(scenario()) == (["ctr-early"], ["ctr-checked"])


@needs_v1_root
@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_removed_cgroup_ends_its_watch_without_an_oom(sandbox: Sandbox, loop_name: str) -> None:
    process = sandbox.start("sleep", "600")
    cgroup = cgroup_of_pid(process.pid)

    async def scenario() -> list[str]:
        watcher = OOMWatcher(asyncio.get_running_loop())
        keys: list[str] = []
        try:
            watcher.add("ctr-2", cgroup, keys.append)
            assert "ctr-2" in watcher
            sandbox.remove()
            await eventually(lambda: "ctr-2" not in watcher)
            return keys
        finally:
            watcher.close()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        assert runner.run(scenario()) == []


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_v2_watch_reports_oom_kill_increases(tmp_path: Path, loop_name: str) -> None:
    # memory.events and cgroup.events are plain files here; inotify works the same on them.
    events = tmp_path / "memory.events"
    populated = tmp_path / "cgroup.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    populated.write_text("populated 1\nfrozen 0\n")
    cgroup = Cgroup(CgroupMode.V2, path=str(tmp_path))

    async def scenario() -> list[str]:
        watcher = OOMWatcher(asyncio.get_running_loop())
        keys: list[str] = []
        try:
            watcher.add("ctr-3", cgroup, keys.append)
            events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
            await asyncio.sleep(0.2)
            assert keys == []  # an "oom" without a kill is not reported
            events.write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n")
            await eventually(lambda: len(keys) == 1)
            events.write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 3\n")
            await eventually(lambda: len(keys) == 2)
            populated.write_text("populated 0\nfrozen 0\n")
            await eventually(lambda: "ctr-3" not in watcher)
            return keys
        finally:
            watcher.close()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        assert runner.run(scenario()) == ["ctr-3", "ctr-3"]


def test_v2_watch_reports_a_kill_before_the_watch(tmp_path: Path) -> None:
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n")
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    async def scenario() -> list[str]:
        watcher = OOMWatcher(asyncio.get_running_loop())
        keys: list[str] = []
        try:
            watcher.add("ctr-4", Cgroup(CgroupMode.V2, path=str(tmp_path)), keys.append)
            await eventually(lambda: keys != [])
            return keys
        finally:
            watcher.close()

    assert asyncio.run(scenario()) == ["ctr-4"]


def test_failed_watches_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        watcher = OOMWatcher(asyncio.get_running_loop())
        with caplog.at_level(logging.WARNING, logger="pyshim.cgroups"):
            watcher.add("no-memory", Cgroup(CgroupMode.V1, paths={"pids": "/x"}), print)
            watcher.add(
                "gone-v1", Cgroup(CgroupMode.V1, paths={"memory": str(tmp_path / "x")}), print
            )
            watcher.add("gone-v2", Cgroup(CgroupMode.V2, path=str(tmp_path / "x")), print)
        assert len(watcher) == 0
        watcher.remove("never-added")
        watcher.close()

    asyncio.run(scenario())
    logged = " ".join(record.getMessage() for record in caplog.records)
    for key in ("no-memory", "gone-v1", "gone-v2"):
        assert f"cannot watch {key} for OOM events" in logged
