"""The conmon monitor's `ctl` and `winsz` FIFOs and a terminal session on real FIFOs and ptys
(spec §5.3, §9, §10): resizes before and after the console exists, log reopen, echo."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import struct
import termios
from pathlib import Path

from pyshim.conmon.attach import AttachServer
from pyshim.conmon.ctl import ControlFifos, WindowSizer
from pyshim.conmon.logdrivers import open_log_drivers, parse_log_paths
from pyshim.io.fanin import StdinWriter
from pyshim.io.fanout import Fanout, OutputPump
from pyshim.reaper import Reaper
from tests.integration.conmon_helpers import (
    connect,
    eventually,
    receive_until_eof,
    records,
    run,
)

CID = "0123456789abcdef0123456789abcdef"


def window_size(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def test_ctl_and_winsz_resize_a_terminal_and_reopen_the_log(short_tmp: Path) -> None:
    log_path = short_tmp / "ctr.log"
    master, slave = os.openpty()

    async def scenario() -> None:
        drivers = open_log_drivers(parse_log_paths([str(log_path)]), cid=CID)
        assert drivers.k8s_file is not None
        drivers.k8s_file.write("stdout", b"before\n")
        sizer = WindowSizer()
        fifos = ControlFifos(str(short_tmp), on_resize=sizer.resize, on_reopen=drivers.reopen)
        fifos.start()
        ctl = os.open(short_tmp / "ctl", os.O_WRONLY | os.O_NONBLOCK)
        winsz = os.open(short_tmp / "winsz", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(ctl, b"1 40 100\n")  # before the terminal exists: applied when it does
            await eventually(lambda: sizer.size == (40, 100))
            sizer.set_master(master)
            assert window_size(slave) == (40, 100)
            inode = os.stat(log_path).st_ino
            os.write(ctl, b"1 50 132\n2 0 0\n")  # two lines in one write: both handled
            await eventually(lambda: os.stat(log_path).st_ino != inode)
            assert window_size(slave) == (50, 132)
            assert log_path.read_bytes() == b""
            drivers.k8s_file.write("stdout", b"after\n")
            os.write(winsz, b"30 80\n")
            await eventually(lambda: window_size(slave) == (30, 80))
            os.write(ctl, b"bogus\n9 9 9\n1 24 8")
            os.write(ctl, b"0\n")
            await eventually(lambda: window_size(slave) == (24, 80))
        finally:
            os.close(ctl)
            os.close(winsz)
            fifos.close()
            drivers.close()

    try:
        run(scenario)
    finally:
        os.close(master)
        os.close(slave)
    assert [content for *_, content in records(log_path)] == [b"after"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("ctl", "winsz"):  # left in place for podman's cleanup
        mode = os.stat(short_tmp / name).st_mode
        assert stat.S_ISFIFO(mode) and stat.S_IMODE(mode) == 0o660 & ~umask


def test_terminal_session_through_the_attach_socket(short_tmp: Path) -> None:
    """A process on a pty: a resize sent before the terminal exists reaches `stty size`, client
    input goes to the master, echo and output come back as stdout packets with \\r\\n, and the
    k8s-file keeps the \\r (spec §5.3, §9, §10, §19 item 6)."""
    log_path = short_tmp / "ctr.log"
    master, slave = os.openpty()

    async def scenario() -> bytes:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        try:
            drivers = open_log_drivers(parse_log_paths([str(log_path)]), cid=CID)
            sizer = WindowSizer()
            fifos = ControlFifos(str(short_tmp), on_resize=sizer.resize,
                                 on_reopen=drivers.reopen)
            fifos.start()
            ctl = os.open(short_tmp / "ctl", os.O_WRONLY | os.O_NONBLOCK)
            os.write(ctl, b"1 40 100\n")
            os.close(ctl)
            await eventually(lambda: sizer.size == (40, 100))
            # The console arrives: resize it, feed it, pump it.
            sizer.set_master(master)
            stdin = StdinWriter()
            stdin.set_target(os.dup(master))
            server = AttachServer.create(bundle=str(short_tmp), cuuid=CID, full_attach=True,
                                         stdin=stdin)
            server.start()
            pump = OutputPump(os.dup(master), "stdout", Fanout([*drivers.sinks, server]),
                              name="terminal")
            pump.start()
            client = connect(short_tmp / "attach")
            await eventually(lambda: len(server.clients) == 1)
            _, exited = reaper.spawn(["/bin/sh", "-c", "stty size; read -r l; echo got:$l"],
                                     stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
            loop = asyncio.get_running_loop()
            received = b""
            while b"40 100\r\n" not in received:
                received += (await loop.sock_recv(client, 8193))[1:]
            await loop.sock_sendall(client, b"typed\n")
            assert (await exited).status == 0
            await pump.wait()  # EIO once the last slave is closed
            drivers.close()
            await server.close()
            received += b"".join(p[1:] for p in await receive_until_eof(client))
            client.close()
            stdin.close()
            fifos.close()
            return received
        finally:
            reaper.uninstall()

    try:
        received = run(scenario)
    finally:
        os.close(master)
        with contextlib.suppress(OSError):
            os.close(slave)
    assert received == b"40 100\r\ntyped\r\ngot:typed\r\n"
    logged = records(log_path)
    assert {stream for _, stream, _, _ in logged} == {"stdout"}
    assert b"".join(content + (b"\n" if tag == "F" else b"")
                    for _, _, tag, content in logged) == received
