"""The conmon monitor's output and input paths on real pipes, files and SEQPACKET sockets: one
pump feeding the k8s-file and every attach client, stdin from clients (spec §7 to §9)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from pyshim.conmon.attach import AttachError, AttachServer
from pyshim.conmon.logdrivers import (
    LogDriverError,
    open_log_drivers,
    parse_log_paths,
)
from pyshim.io.fanin import StdinWriter
from pyshim.io.fanout import Fanout, OutputPump
from tests.integration.conmon_helpers import (
    connect,
    eventually,
    receive_until_eof,
    records,
    run,
)

CID = "0123456789abcdef0123456789abcdef"


def test_one_pump_feeds_the_log_and_every_client(short_tmp: Path) -> None:
    """The spec's observed example (§8.2.2, §9.2), one chunk per write."""
    log_path = short_tmp / "ctr.log"

    async def scenario() -> list[list[bytes]]:
        drivers = open_log_drivers(parse_log_paths([f"k8s-file:{log_path}"]), cid=CID)
        server = AttachServer.create(bundle=str(short_tmp), cuuid=CID, full_attach=True)
        server.start()
        clients = [connect(short_tmp / "attach") for _ in range(2)]
        await eventually(lambda: len(server.clients) == 2)
        fanout = Fanout([*drivers.sinks, server])
        out_read, out_write = os.pipe2(os.O_CLOEXEC)
        err_read, err_write = os.pipe2(os.O_CLOEXEC)
        out = OutputPump(out_read, "stdout", fanout, name="stdout")
        err = OutputPump(err_read, "stderr", fanout, name="stderr")
        out.start()
        err.start()
        readers = [asyncio.ensure_future(receive_until_eof(c)) for c in clients]

        async def put(fd: int, pump: OutputPump, data: bytes) -> None:
            os.write(fd, data)
            await pump.drained()

        await put(out_write, out, b"hello\npartial")
        await put(err_write, err, b"oops\n")
        await put(out_write, out, b"a\nb\nc")
        await put(out_write, out, b"\n")
        os.close(out_write)
        os.close(err_write)
        await out.wait()
        await err.wait()
        drivers.close()
        await server.close()
        received = await asyncio.gather(*readers)
        for client in clients:
            client.close()
        return received

    received = run(scenario)
    expected = [b"\x02hello\npartial", b"\x03oops\n", b"\x02a\nb\nc", b"\x02\n"]
    assert received == [expected, expected]
    logged = records(log_path)
    assert [(stream, tag, content) for _, stream, tag, content in logged] == [
        ("stdout", "F", b"hello"), ("stdout", "P", b"partial"), ("stderr", "F", b"oops"),
        ("stdout", "F", b"a"), ("stdout", "F", b"b"), ("stdout", "P", b"c"),
        ("stdout", "F", b""),
    ]
    stamps = [stamp for stamp, *_ in logged]
    assert stamps[0] == stamps[1] and stamps[3] == stamps[4] == stamps[5]
    assert stat.S_IMODE(os.stat(log_path).st_mode) & 0o077 in (0, 0o040)
    assert stat.S_ISSOCK(os.stat(short_tmp / "attach").st_mode)  # until unlink()


def test_a_process_talks_through_the_attach_socket(short_tmp: Path) -> None:
    """stdin from a client reaches a real process, its output comes back as packets, and the
    client's EOF closes the process's stdin (-i without --leave-stdin-open, spec §9.4)."""
    log_path = short_tmp / "ctr.log"

    stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
    out_read, out_write = os.pipe2(os.O_CLOEXEC)
    process = subprocess.Popen(
        ["/bin/sh", "-c", 'while read -r line; do echo "got:$line"; done; echo bye >&2'],
        stdin=stdin_read, stdout=out_write, stderr=out_write,
    )
    os.close(stdin_read)
    os.close(out_write)

    async def scenario() -> tuple[list[bytes], int]:
        try:
            drivers = open_log_drivers(parse_log_paths([str(log_path)]), cid=CID)
            stdin = StdinWriter(stdin_write)
            server = AttachServer.create(bundle=str(short_tmp), cuuid=CID, full_attach=True,
                                         stdin=stdin, close_stdin_on_detach=True)
            server.start()
            pump = OutputPump(out_read, "stdout", Fanout([*drivers.sinks, server]),
                              name="stdout")
            pump.start()
            client = connect(short_tmp / "attach")
            await eventually(lambda: len(server.clients) == 1)
            reader = asyncio.ensure_future(receive_until_eof(client))
            loop = asyncio.get_running_loop()
            for piece in (b"one\n", b"two\nthr", b"ee\n"):
                await loop.sock_sendall(client, piece)
            client.shutdown(socket.SHUT_WR)
            await eventually(lambda: process.poll() is not None)
            await pump.wait()
            drivers.close()
            await server.close()
            packets = await reader
            client.close()
            return packets, process.returncode
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    packets, returncode = run(scenario)
    assert returncode == 0
    assert all(packet[:1] == b"\x02" for packet in packets)
    assert b"".join(packet[1:] for packet in packets) == b"got:one\ngot:two\ngot:three\nbye\n"
    assert b"".join(content + (b"\n" if tag == "F" else b"")
                    for _, _, tag, content in records(log_path)) == (
        b"got:one\ngot:two\ngot:three\nbye\n")


def test_leave_stdin_open_keeps_stdin_for_the_next_client(short_tmp: Path) -> None:
    async def scenario() -> bytes:
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        stdin = StdinWriter(stdin_write)
        server = AttachServer.create(bundle=str(short_tmp), cuuid=CID, full_attach=True,
                                     stdin=stdin, close_stdin_on_detach=False)
        server.start()
        loop = asyncio.get_running_loop()
        for text in (b"first\n", b"second\n"):
            client = connect(short_tmp / "attach")
            await loop.sock_sendall(client, text)
            client.shutdown(socket.SHUT_WR)
            await eventually(lambda: len(server.clients) == 0 or stdin.written > 6)
            client.close()
        await eventually(lambda: stdin.written == len(b"first\nsecond\n"))
        assert not stdin.closed
        stdin.close()
        await server.close()
        server.unlink()
        data = os.read(stdin_read, 100)
        assert os.read(stdin_read, 100) == b""  # EOF: our close was the last writer
        os.close(stdin_read)
        return data

    assert run(scenario) == b"first\nsecond\n"
    assert not (short_tmp / "attach").exists()


def test_a_client_that_does_not_read_never_holds_the_log(short_tmp: Path) -> None:
    """Back-pressure: a reading client and the log get every byte; one that never reads holds
    the pump only until it has taken nothing for the stall timeout, then it is cut off (its
    write direction shut down: it sees EOF) and the log goes on."""
    log_path = short_tmp / "ctr.log"
    total = 4 << 20

    async def scenario() -> tuple[int, int, int]:
        drivers = open_log_drivers(parse_log_paths([str(log_path)]), cid=CID)
        server = AttachServer.create(bundle=str(short_tmp), cuuid=CID, full_attach=True)
        server.client_backlog = 64 << 10
        server.stall_timeout = 1.0
        server.start()
        stalled = connect(short_tmp / "attach")
        reading = connect(short_tmp / "attach")
        await eventually(lambda: len(server.clients) == 2)
        reader = asyncio.ensure_future(receive_until_eof(reading))
        src, sink = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        pump = OutputPump(src, "stdout", Fanout([*drivers.sinks, server]), name="stdout")
        pump.start()
        loop = asyncio.get_running_loop()
        line = b"x" * 99 + b"\n"
        chunk = line * 80
        for _ in range(total // len(chunk) + 1):
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(sink, view):]
                except BlockingIOError:
                    ready = loop.create_future()
                    loop.add_writer(sink, ready.set_result, None)
                    try:
                        await ready
                    finally:
                        loop.remove_writer(sink)
        os.close(sink)
        await pump.wait()
        sent = pump.pumped
        drivers.close()
        stalled_packets = await receive_until_eof(stalled)  # ends: it was cut off
        await server.close()
        got = sum(len(p) - 1 for p in await reader)
        stalled.close()
        reading.close()
        return sent, got, sum(len(p) - 1 for p in stalled_packets)

    sent, got, stalled_got = run(scenario)
    assert sent >= total
    assert got == sent
    assert stalled_got < sent
    logged = records(log_path)
    assert sum(len(content) + (tag == "F") for _, _, tag, content in logged) == sent


def test_socket_through_a_symlink_and_long_bundle_paths(short_tmp: Path) -> None:
    bundle = short_tmp / ("b" * 60) / ("c" * 60)
    bundle.mkdir(parents=True)
    socket_dir = short_tmp / "sd"
    socket_dir.mkdir()
    (socket_dir / "u1").write_text("stale")  # replaced by the symlink

    async def scenario() -> None:
        server = AttachServer.create(bundle=str(bundle), cuuid="u1", full_attach=False,
                                     socket_dir=str(socket_dir))
        server.start()
        assert server.path == str(socket_dir / "u1" / "attach")
        client = connect(server.path)
        await eventually(lambda: len(server.clients) == 1)
        await server.close()
        assert await receive_until_eof(client) == []
        client.close()
        assert stat.S_ISSOCK(os.stat(bundle / "attach").st_mode)
        assert stat.S_IMODE(os.stat(bundle / "attach").st_mode) == 0o700
        server.unlink()
        full = AttachServer.create(bundle=str(bundle), cuuid="u1", full_attach=True)
        full.start()
        assert len(str(bundle / "attach")) > 108
        client = connect(bundle / "attach")
        await eventually(lambda: len(full.clients) == 1)
        await full.close()
        full.unlink()
        client.close()

    run(scenario)
    assert os.readlink(socket_dir / "u1") == str(bundle)
    assert not (bundle / "attach").exists()


def test_missing_socket_dir_is_conmons_error(tmp_path: Path) -> None:
    with pytest.raises(AttachError, match="Failed to create symlink for notify socket"):
        AttachServer.create(bundle=str(tmp_path), cuuid="u", full_attach=False,
                            socket_dir=str(tmp_path / "missing"))


def test_log_size_max_and_global_size_max(tmp_path: Path) -> None:
    """Truncation (the file never holds more than the limit, the newest records stay) and the
    global cap (the crossing record is written whole, the rest dropped)."""
    record = b"y" * 33 + b"\n"  # 34 + 45 = 79 bytes as a record, as in conmon's observation
    sized = open_log_drivers(parse_log_paths([str(tmp_path / "a.log")]), cid=CID,
                             log_size_max=300)
    capped = open_log_drivers(parse_log_paths([str(tmp_path / "b.log")]), cid=CID,
                              log_global_size_max=200)
    fanout = Fanout([*sized.sinks, *capped.sinks])
    for _ in range(12):
        fanout.write("stdout", record)
        assert (tmp_path / "a.log").stat().st_size <= 300
    sized.close()
    capped.close()
    assert (tmp_path / "a.log").stat().st_size == 3 * 79
    assert (tmp_path / "b.log").stat().st_size == 3 * 79  # 158 < 200: the third is written


def test_log_file_errors_are_conmons(tmp_path: Path) -> None:
    with pytest.raises(LogDriverError) as raised:
        open_log_drivers(parse_log_paths([str(tmp_path / "missing" / "x.log")]), cid=CID)
    assert str(raised.value) == "[conmon:e]: Failed to open log file No such file or directory"
    with pytest.raises(LogDriverError) as raised:
        open_log_drivers(parse_log_paths([str(tmp_path / "x.log")]), cid=CID, tag="t")
    assert str(raised.value) == "[conmon:e] k8s-file doesn't support --log-tag"
    drivers = open_log_drivers(parse_log_paths([str(tmp_path / "x.log"), "journald"]),
                               cid=CID, tag="t", journal_socket=str(tmp_path / "none"))
    drivers.close()
    with pytest.raises(LogDriverError, match="longer than 12"):
        open_log_drivers(parse_log_paths(["journald"]), cid="short")
