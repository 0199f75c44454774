"""The conmon monitor's exit (spec §11) with real files, processes and cgroups: exit files,
the exit command, the order of the steps, the --timeout kill, and the OOM marker (a real
cgroup v1 memory limit; the v2 code path on a stand-in memory.events)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
from pathlib import Path

import prctl
import pytest

from pyshim.cgroups import Cgroup, CgroupMode
from pyshim.conmon.attach import AttachServer
from pyshim.conmon.exits import (
    ExitCommand,
    ExitFileError,
    ExitSteps,
    conclude,
    run_exit_command,
    write_exit_files,
)
from pyshim.conmon.logdrivers import open_log_drivers, parse_log_paths
from pyshim.conmon.oom import OomMonitor
from pyshim.io.fanout import Fanout, OutputPump
from pyshim.oom import OOMWatcher
from pyshim.reaper import Reaper
from tests.integration.conmon_helpers import connect, eventually, receive_until_eof, records, run
from tests.integration.test_cgroups import Sandbox, limit_memory, needs_v1_root

CID = "feedfacefeedfacefeedfacefeedface"


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_exit_files_hold_the_status_without_a_newline(tmp_path: Path) -> None:
    persist, exits = tmp_path / "persist", tmp_path / "exits"
    persist.mkdir()
    exits.mkdir()
    write_exit_files(137, cid=CID, persist_dir=str(persist), exit_dir=str(exits))
    assert (persist / "exit").read_bytes() == b"137"
    assert (exits / CID).read_bytes() == b"137"
    assert stat.S_IMODE((exits / CID).stat().st_mode) == 0o666 & ~current_umask()
    write_exit_files(-1, cid=CID, persist_dir=None, exit_dir=str(exits))
    assert (exits / CID).read_bytes() == b"-1"
    assert sorted(p.name for p in exits.iterdir()) == [CID]  # no temp file left


def test_persist_file_comes_before_the_exit_dir_file(tmp_path: Path) -> None:
    """A failure on the exit-dir file finds the persist file already complete."""
    persist = tmp_path / "persist"
    persist.mkdir()
    not_a_directory = tmp_path / "exits"
    not_a_directory.write_text("")
    with pytest.raises(ExitFileError, match=r"\[conmon:e\]: Failed to write 3 to exit file"):
        write_exit_files(3, cid=CID, persist_dir=str(persist), exit_dir=str(not_a_directory))
    assert (persist / "exit").read_bytes() == b"3"


async def reaping() -> Reaper:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    return reaper


def test_exit_command_gets_its_args_after_the_delay(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = 'printf "%s," "$@" > "$OUT"; exit 3'

    async def scenario() -> int:
        reaper = await reaping()
        try:
            os.environ["OUT"] = str(out)
            command = ExitCommand("/bin/sh", ["-c", script, "sh", "a b", "c"], delay=1)
            return await run_exit_command(command, reaper)
        finally:
            del os.environ["OUT"]
            reaper.uninstall()

    assert run(scenario) == 3
    assert out.read_text() == "a b,c,"


def test_an_exit_command_that_cannot_run_counts_as_1(tmp_path: Path) -> None:
    async def scenario() -> int:
        reaper = await reaping()
        try:
            return await run_exit_command(ExitCommand(str(tmp_path / "missing")), reaper)
        finally:
            reaper.uninstall()

    assert run(scenario) == 1


def test_conclude_runs_conmons_steps_in_order(short_tmp: Path) -> None:
    """Output drained into the log and the client, clients closed, exit files, the exec exit
    message, the socket unlinked, then the exit command (which sees all of that done)."""
    bundle, persist, exits = short_tmp / "b", short_tmp / "p", short_tmp / "e"
    for directory in (bundle, persist, exits):
        directory.mkdir()
    seen = short_tmp / "seen"
    check = (f'test -e {persist}/exit && test -e {exits}/{CID} && ! test -e {bundle}/attach '
             f'&& echo ok > {seen}; exit 7')
    messages: list[int] = []

    async def scenario() -> tuple[int, list[str], list[bytes]]:
        reaper = await reaping()
        try:
            drivers = open_log_drivers(parse_log_paths([f"{bundle}/ctr.log"]), cid=CID)
            server = AttachServer.create(bundle=str(bundle), cuuid=CID, full_attach=True)
            server.start()
            client = connect(bundle / "attach")
            await eventually(lambda: len(server.clients) == 1)
            reader = asyncio.ensure_future(receive_until_eof(client))
            src, sink = os.pipe2(os.O_CLOEXEC)
            pump = OutputPump(src, "stdout", Fanout([*drivers.sinks, server]), name="out")
            pump.start()
            os.write(sink, b"last words\n")  # still in the pipe when the exit begins
            steps = ExitSteps(
                cid=CID, persist_dir=str(persist), exit_dir=str(exits), drain=pump.drained,
                log_drivers=drivers, attach=server, send_exit_message=messages.append,
                exit_command=ExitCommand("/bin/sh", ["-c", check]), reaper=reaper,
            )
            code = await conclude(steps, 42)
            os.close(sink)
            await pump.wait()
            packets = await reader
            client.close()
            return code, steps.done, packets
        finally:
            reaper.uninstall()

    code, done, packets = run(scenario)
    assert code == 7  # the exit command's non-zero status wins
    assert done == ["drain", "logs closed", "clients closed", "exit files", "exit message",
                    "socket unlinked", "exit command"]
    assert messages == [42]
    assert packets == [b"\x02last words\n"]
    assert [content for *_, content in records(bundle / "ctr.log")] == [b"last words"]
    assert (persist / "exit").read_bytes() == b"42"
    assert seen.read_text() == "ok\n"


def test_timeout_kills_the_process_group_and_reports_minus_1(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int]:
        reaper = await reaping()
        prctl.set_child_subreaper(1)
        try:
            # A group leader whose child shares its group: both must die.
            pid, exited = reaper.spawn(["/bin/sh", "-c", "sleep 600 & wait"],
                                       new_process_group=True)
            steps = ExitSteps(cid=CID, exit_dir=str(tmp_path))
            code = await conclude(steps, 0, timed_out=True, container_pid=pid)
            status = (await asyncio.wait_for(exited, 20)).status
            return code, status
        finally:
            prctl.set_child_subreaper(0)
            reaper.uninstall()

    code, status = run(scenario)
    assert (tmp_path / CID).read_bytes() == b"-1"
    assert code == 255
    assert status == 128 + signal.SIGKILL


# ------------------------------------------------------------------------------------- OOM


@needs_v1_root
def test_oom_kill_under_a_v1_memory_limit_writes_the_markers(tmp_path: Path) -> None:
    bundle, persist = tmp_path / "bundle", tmp_path / "persist"
    bundle.mkdir()
    persist.mkdir()
    sandbox = Sandbox()
    try:
        limit_memory(sandbox, 16 << 20)
        hog = sandbox.start(sys.executable, "-c", "b = b'x' * (64 << 20)", hold=True)

        async def scenario() -> bool:
            monitor = OomMonitor(bundle=str(bundle), persist_dir=str(persist))
            try:
                assert monitor.watch(hog.pid)
                assert hog.stdin is not None
                hog.stdin.write(b"go\n")
                hog.stdin.flush()
                await eventually(lambda: monitor.oom_killed)
                return monitor.oom_killed
            finally:
                monitor.close()

        assert run(scenario)
        assert hog.wait(timeout=20) == -signal.SIGKILL
    finally:
        sandbox.remove()
    for directory in (bundle, persist):
        assert (directory / "oom").read_bytes() == b""


@needs_v1_root
def test_final_check_catches_an_oom_the_loop_has_not_seen(tmp_path: Path) -> None:
    """The exit may be handled before the OOM event's loop callback has run."""
    sandbox = Sandbox()
    try:
        limit_memory(sandbox, 16 << 20)
        hog = sandbox.start(sys.executable, "-c", "b = b'x' * (64 << 20)", hold=True)

        async def scenario() -> bool:
            monitor = OomMonitor(bundle=str(tmp_path), persist_dir=None)
            try:
                assert monitor.watch(hog.pid)
                assert hog.stdin is not None
                hog.stdin.write(b"go\n")
                hog.stdin.flush()
                # Blocking on purpose: the loop gets no turn between the kill and the check.
                hog.wait(timeout=20)
                monitor.final_check()
                return monitor.oom_killed
            finally:
                monitor.close()

        assert run(scenario)
    finally:
        sandbox.remove()
    assert (tmp_path / "oom").exists()


@pytest.mark.parametrize(("events", "oom"), [(1, False), (2, True)])
def test_v1_events_read_after_the_cgroup_went(tmp_path: Path, events: int, oom: bool) -> None:
    """The eventfd also counts the cgroup's removal: one event with the cgroup gone is only
    that; more were an OOM before it (as conmon reads them). The kernel's side is stood in for:
    plain files for the cgroup, the count written into the watch's eventfd."""
    memory = tmp_path / "memory"
    memory.mkdir()
    for name in ("memory.oom_control", "cgroup.event_control"):
        (memory / name).write_text("")
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    async def scenario() -> bool:
        watcher = OOMWatcher(asyncio.get_running_loop())
        monitor = OomMonitor(bundle=str(bundle), persist_dir=None, watcher=watcher)
        try:
            assert monitor.watch_cgroup(Cgroup(CgroupMode.V1, paths={"memory": str(memory)}),
                                        key="c")
            shutil.rmtree(memory)
            os.write(watcher._watches["c"].fd, events.to_bytes(8, sys.byteorder))
            monitor.final_check()
            return monitor.oom_killed
        finally:
            monitor.close()

    assert run(scenario) is oom
    assert (bundle / "oom").exists() is oom


def test_v2_oom_is_read_from_memory_events_at_the_final_check(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()

    async def scenario() -> bool:
        monitor = OomMonitor(bundle=str(bundle), persist_dir=None)
        try:
            assert monitor.watch_cgroup(Cgroup(CgroupMode.V2, path=str(tmp_path)), key="c")
            # conmon reads the `oom` line: the limit was hit, even if nothing was killed.
            events.write_text("low 0\nhigh 0\nmax 2\noom 1\noom_kill 0\n")
            monitor.final_check()  # before inotify's event had a loop turn
            return monitor.oom_killed
        finally:
            monitor.close()

    assert run(scenario)
    assert (bundle / "oom").exists()


def test_an_unwatchable_process_is_a_warning(tmp_path: Path) -> None:
    async def scenario() -> bool:
        monitor = OomMonitor(bundle=str(tmp_path), persist_dir=None)
        watched = monitor.watch(2**22 + 12345)  # no such pid
        monitor.final_check()
        monitor.close()
        return watched

    assert run(scenario) is False
    assert not (tmp_path / "oom").exists()
