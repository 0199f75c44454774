"""The reaper and the I/O relays with real processes, pipes and FIFOs (no containerd)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import prctl
import uvloop

from pyshim.io.fifo import open_input, open_output
from pyshim.io.pipes import PipeIO
from pyshim.io.spool import Spool
from pyshim.reaper import Reaper, exit_status

T = TypeVar("T")


def with_reaper(scenario: Callable[[Reaper], Awaitable[T]]) -> T:
    """Run scenario with a reaper installed, as child subreaper (so background children of
    the processes it spawns come back to us, as they do in the shim); afterwards wait until
    every such child is reaped: nothing is left behind as a zombie of PID 1."""

    async def main() -> T:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        prctl.set_child_subreaper(1)
        try:
            return await asyncio.wait_for(scenario(reaper), 30)
        finally:
            for _ in range(100):  # up to 10 s
                if not _children():
                    break
                await asyncio.sleep(0.1)
            prctl.set_child_subreaper(0)
            reaper.uninstall()

    return uvloop.run(main())


def _children() -> list[int]:
    return [
        int(pid) for pid in os.listdir("/proc")
        if pid.isdigit() and (_ppid_and_state(int(pid)) or (0, ""))[0] == os.getpid()
    ]


def test_exit_status_mapping() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(signal.SIGKILL) == 137
    assert exit_status(signal.SIGTERM) == 143


def test_spawned_exits_are_routed_by_pid() -> None:
    async def scenario(reaper: Reaper) -> list[int]:
        spawned = [reaper.spawn(["/bin/sh", "-c", f"exit {code}"]) for code in (0, 3, 42)]
        killed_pid, killed = reaper.spawn(["/bin/sleep", "100"])
        os.kill(killed_pid, signal.SIGKILL)
        exits = [await future for _, future in spawned] + [await killed]
        assert [e.pid for e in exits] == [pid for pid, _ in spawned] + [killed_pid]
        return [e.status for e in exits]

    assert with_reaper(scenario) == [0, 3, 42, 137]


def test_exit_before_the_pid_is_known_is_matched_with_since() -> None:
    """A process may exit before runc tells us its pid: the reaper keeps the exit."""

    async def scenario(reaper: Reaper) -> int:
        since = reaper.sequence
        # A grandchild re-parented to us would look the same; a direct child is enough here.
        pid, future = reaper.spawn(["/bin/sh", "-c", "exit 7"])
        reaper.forget(pid, future)  # as if nobody knew the pid yet
        await asyncio.sleep(0.5)
        late = reaper.watch(pid, since=since)
        assert late.done()
        stale = reaper.watch(pid, since=reaper.sequence)  # an older exit is not this process
        assert not stale.done()
        reaper.forget(pid, stale)
        return (await late).status

    assert with_reaper(scenario) == 7


def test_orphans_are_reaped() -> None:
    """Grandchildren re-parented to a subreaper must not stay zombies."""

    async def scenario(reaper: Reaper) -> None:
        _, future = reaper.spawn(["/bin/sh", "-c", "/bin/sleep 0.2 & exit 0"])
        await future
        await asyncio.sleep(1.0)
        zombies = [
            child for child in os.listdir("/proc") if child.isdigit()
            and _ppid_and_state(int(child)) == (os.getpid(), "Z")
        ]
        assert zombies == []
        assert _children() == []

    with_reaper(scenario)


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def _fifo(directory: Path, name: str) -> str:
    path = directory / name
    os.mkfifo(path)
    return str(path)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def test_fifo_output_relay_loses_nothing_and_reports_drained(short_tmp: Path) -> None:
    """8 MiB through a pipe and a FIFO; `wait_output` returns once the writer's bytes are
    through even though a background child still holds the pipe."""
    stdout_path = _fifo(short_tmp, "out")
    size = 8 << 20

    async def scenario(reaper: Reaper) -> bytes:
        io = PipeIO(stdout=open_output(stdout_path))
        reader = os.open(stdout_path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(reader, True)
        stdio = io.runtime_stdio()
        _pid, exited = reaper.spawn(
            ["/bin/sh", "-c", f"/bin/sleep 3 & head -c {size} /dev/zero; exit 5"],
            stdout=stdio.stdout,
        )
        await io.start()
        loop = asyncio.get_running_loop()
        data_future = loop.run_in_executor(None, _read_all, reader)
        assert (await exited).status == 5
        started = time.monotonic()
        await io.wait_output()
        assert time.monotonic() - started < 2.5  # did not wait for the background sleep
        await io.close(drain_timeout=0)
        data = await data_future
        os.close(reader)
        return data

    data = with_reaper(scenario)
    assert len(data) == size


def test_stdin_keepalive_until_close_io(short_tmp: Path) -> None:
    """The container's stdin survives a client detaching; CloseIO + client close → EOF."""
    stdin_path = _fifo(short_tmp, "in")
    stdout_path = _fifo(short_tmp, "out")

    async def scenario(reaper: Reaper) -> bytes:
        io = PipeIO(stdin=open_input(stdin_path), stdout=open_output(stdout_path))
        reader = os.open(stdout_path, os.O_RDONLY | os.O_NONBLOCK)
        stdio = io.runtime_stdio()
        _, exited = reaper.spawn(["/bin/cat"], stdin=stdio.stdin, stdout=stdio.stdout)
        await io.start()
        for part in (b"first\n", b"second\n"):  # two clients, one after the other
            writer = os.open(stdin_path, os.O_WRONLY)
            os.write(writer, part)
            os.close(writer)
            await asyncio.sleep(0.3)
        assert not exited.done()  # no EOF while our keep-open writer exists
        io.close_stdin()
        status = (await exited).status
        await io.wait_output()
        await io.close(drain_timeout=1)
        os.set_blocking(reader, True)
        data = _read_all(reader)
        os.close(reader)
        assert status == 0
        return data

    assert with_reaper(scenario) == b"first\nsecond\n"


def test_output_without_a_reader_is_discarded_when_there_is_no_spool(short_tmp: Path) -> None:
    """A destination without a spool (a logging binary's pipe) whose reader is gone: the
    writer is never blocked, its output is dropped."""
    stdout_path = _fifo(short_tmp, "out")

    async def scenario(reaper: Reaper) -> int:
        io = PipeIO(stdout=open_output(stdout_path))
        stdio = io.runtime_stdio()
        _, exited = reaper.spawn(["/bin/sh", "-c", "head -c 4000000 /dev/zero"],
                                 stdout=stdio.stdout)
        await io.start()
        status = (await exited).status  # 4 MB > FIFO + pipe: only finishes if we drain it
        await io.wait_output()
        await io.close(drain_timeout=0)
        return status

    assert with_reaper(scenario) == 0


def _numbers(count: int) -> bytes:
    return b"".join(b"%d\n" % number for number in range(1, count + 1))


def test_output_without_a_reader_is_spooled_and_replayed_in_order(short_tmp: Path) -> None:
    """No reader (a detached client, containerd restarting): the writer never blocks, the
    output goes to the spool (memory, then the spill file) and is reported drained at once;
    a reader that opens the FIFO later gets every byte, in order, and then EOF."""
    stdout_path = _fifo(short_tmp, "out")
    spill = short_tmp / "spool" / "stdout"
    count = 400_000  # ~2.7 MB: more than the FIFO, the pipe and the spool's memory

    async def scenario(reaper: Reaper) -> tuple[bytes, bool, int]:
        spool = Spool(str(spill), limit=64 << 20, name="test stdout", memory_max=256 << 10)
        io = PipeIO(stdout=open_output(stdout_path, spool))
        stdio = io.runtime_stdio()
        _, exited = reaper.spawn(["/bin/sh", "-c", f"seq 1 {count}"], stdout=stdio.stdout)
        await io.start()
        status = (await exited).status
        await io.wait_output()  # nobody reads: returns once everything is held
        spilled = spill.exists()
        reader = os.open(stdout_path, os.O_RDONLY)  # blocks until our relay's writer is there
        data = await asyncio.get_running_loop().run_in_executor(None, _read_all, reader)
        os.close(reader)
        await io.close(drain_timeout=1)
        return data, spilled, status

    data, spilled, status = with_reaper(scenario)
    assert status == 0
    assert spilled
    assert data == _numbers(count)
    assert not spill.exists()


def test_delete_does_not_wait_for_a_reader_that_is_away(short_tmp: Path) -> None:
    """The writer exited and its output is held for an absent reader: closing for delete
    stops at once, whatever drain time it is given (nothing more can arrive by itself), and
    drops the spool with its spill file. (with_reaper bounds the scenario: a close that waited
    for the reader would fail it.)"""
    stdout_path = _fifo(short_tmp, "out")
    spill = short_tmp / "spool" / "stdout"

    async def scenario(reaper: Reaper) -> tuple[int, bool]:
        spool = Spool(str(spill), limit=64 << 20, name="test stdout", memory_max=64 << 10)
        io = PipeIO(stdout=open_output(stdout_path, spool))
        stdio = io.runtime_stdio()
        _, exited = reaper.spawn(["/bin/sh", "-c", "seq 1 100000"], stdout=stdio.stdout)
        await io.start()
        status = (await exited).status
        await io.wait_output()
        spilled = spill.exists()
        await io.close(drain_timeout=3600)
        return status, spilled

    status, spilled = with_reaper(scenario)
    assert status == 0
    assert spilled  # there was output held for the reader
    assert not spill.exists()


def test_a_full_spool_counts_what_it_drops(short_tmp: Path) -> None:
    spool = Spool(str(short_tmp / "spill"), limit=1000, name="capped", memory_max=100)
    spool.append(b"a" * 60)
    spool.append(b"b" * 60)  # memory is full: from here on the spill file
    spool.append(b"c" * 1000)
    assert len(spool) == 1000 and spool.dropped == 120
    assert spool.peek(1000) == b"a" * 60  # memory first, then the spill file
    spool.consume(60)
    assert spool.peek(2000) == b"b" * 60 + b"c" * 880
    spool.consume(940)
    assert len(spool) == 0 and not (short_tmp / "spill").exists()
    spool.append(b"d")  # empty again: memory first
    assert spool.peek(10) == b"d" and not (short_tmp / "spill").exists()
    spool.close()



def test_output_that_ends_without_a_reader_and_nothing_held_just_ends(short_tmp: Path) -> None:
    """splice says EPIPE, not EOF, when the output ends while the FIFO has no reader (a
    `ctr run -d` container exiting): that is the end of the stream as read/write would see it,
    nothing waits for a reader to replay nothing to, and the FIFO's writer is closed (a reader
    opening it now gets EOF at once), as runc-v2 closes it. Nobody ever reads here."""
    stdout_path = _fifo(short_tmp, "out")

    async def scenario(reaper: Reaper) -> tuple[int, list[str]]:
        spool = Spool(str(short_tmp / "spool"), limit=1 << 20, name="test stdout")
        io = PipeIO(stdout=open_output(stdout_path, spool))
        stdio = io.runtime_stdio()
        _, exited = reaper.spawn(["/bin/true"], stdout=stdio.stdout)
        await io.start()
        status = (await exited).status
        await io.wait_output()
        for _ in range(500):  # up to 5 s (no reader ever comes)
            if not _fds_on(stdout_path):
                break
            await asyncio.sleep(0.01)
        still_open = _fds_on(stdout_path)
        await io.close(drain_timeout=1)
        return status, still_open

    assert with_reaper(scenario) == (0, [])


def _fds_on(path: str) -> list[str]:
    """Our fds that refer to path (O_PATH handles too)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                found.append(fd)
    return found
