"""The engine's CRI log relay (`pyshim run --log-path`) on the output fan-out, with real pipes:
the tee gets every byte with back-pressure, a tee whose reader left is dropped while logging
goes on, and the last partial line is flushed at EOF."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pyshim.io.fifo import OutputTarget
from pyshim.io.log_relay import LogRelay, LogSink
from pyshim.logs import CriLogWriter
from tests import cri_log_reader
from tests.integration.conmon_helpers import run


async def read_all(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


def test_tee_gets_every_byte_and_the_log_every_line(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % n for n in range(100_000)) + b"no newline"

    async def scenario() -> bytes:
        writer = CriLogWriter(tmp_path / "c.log")
        src, sink = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        tee_read, tee_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        relay = LogRelay(src, LogSink(writer, "stdout", OutputTarget(tee_write)), name="t")
        relay.start()
        reader = asyncio.ensure_future(read_all(tee_read))  # slower than the pump: pipe fills
        await write_all(sink, data)
        os.close(sink)
        await relay.wait()
        relay.sink.close()
        teed = await reader
        os.close(tee_read)
        writer.close()
        return teed

    assert run(scenario) == data
    records = cri_log_reader.read(tmp_path / "c.log")
    assert cri_log_reader.streams(records) == {"stdout": data, "stderr": b""}


def test_a_tee_without_reader_is_dropped_and_logging_goes_on(tmp_path: Path) -> None:
    async def scenario() -> bool:
        writer = CriLogWriter(tmp_path / "c.log")
        src, sink = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        tee_read, tee_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.close(tee_read)
        relay = LogRelay(src, LogSink(writer, "stderr", OutputTarget(tee_write)), name="t")
        relay.start()
        await write_all(sink, b"one\ntwo\n")
        os.close(sink)
        await relay.wait()
        writer.close()
        return relay.sink.tee is None

    assert run(scenario)
    records = cri_log_reader.read(tmp_path / "c.log")
    assert cri_log_reader.streams(records) == {"stdout": b"", "stderr": b"one\ntwo\n"}
