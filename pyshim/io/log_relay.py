"""Relaying a container's output into a CRI log file (and, optionally, on to an fd).

The output pump of pyshim.io.fanout with two sinks: the CRI log (a CriLogWriter) and a `tee`
fd written with back-pressure. Never formats a record (pyshim.logs does) and never closes the
writer (its owner does: one writer serves both streams).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from dataclasses import dataclass

from pyshim.io.fanout import Fanout, OutputPump, OutputSink
from pyshim.io.fdwait import wait_fd
from pyshim.io.fifo import OutputTarget
from pyshim.logs import CriLogWriter

log = logging.getLogger("pyshim.io")

_READ_CHUNK = 1 << 16


@dataclass(slots=True)
class LogSink:
    """Where one stream goes: the CRI log (as `stream`), and a copy to `tee` if set."""

    writer: CriLogWriter
    stream: str
    tee: OutputTarget | None = None

    def close(self) -> None:
        if self.tee is not None:
            self.tee.close()


class CriLogOutput(OutputSink):
    """A fan-out sink writing each chunk to a CRI log; a stream's end flushes its partial line.
    Write errors are raised (the fan-out logs them once and goes on)."""

    name = "CRI log"

    def __init__(self, writer: CriLogWriter) -> None:
        self.writer = writer

    def write(self, stream: str, data: bytes) -> None:
        self.writer.write(stream, data)

    def end(self, stream: str) -> None:
        if not self.writer.closed:
            self.writer.flush(stream)


class _TeeOutput(OutputSink):
    """The copy to the tee fd; holds the pump while the fd is full, drops the tee (closing it)
    once its reader has gone."""

    name = "tee"

    def __init__(self, owner: LogSink) -> None:
        self._owner = owner
        self._pending = b""

    def write(self, stream: str, data: bytes) -> None:
        if self._owner.tee is not None:
            self._pending = data
            self._push()

    def blocked(self) -> Awaitable[None] | None:
        return self._drain() if self._pending else None

    def _push(self) -> None:
        tee = self._owner.tee
        while self._pending and tee is not None:
            try:
                written = os.write(tee.fd, self._pending)
            except BlockingIOError:
                return
            except OSError:  # EPIPE and friends: the reader went away; keep logging
                self._pending = b""
                self._owner.tee = None
                tee.close()
                return
            self._pending = self._pending[written:]

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self._owner.tee is not None:
            await wait_fd(loop, self._owner.tee.fd, write=True)
            self._push()
        self._pending = b""


class LogRelay(OutputPump):
    """Copies src into the sink until src reaches EOF (every writer gone) or it is closed.

    At the end the stream's last partial line is flushed (a P record). A failing log write is
    logged once and the bytes still go to the tee; a tee whose reader went away is dropped.
    """

    def __init__(self, src: int, sink: LogSink, *, name: str) -> None:
        self.sink = sink
        sinks: list[OutputSink] = [CriLogOutput(sink.writer)]
        if sink.tee is not None:
            sinks.append(_TeeOutput(sink))
        super().__init__(src, sink.stream, Fanout(sinks), name=name, chunk=_READ_CHUNK)

    def start(self) -> None:
        self._start(self.src, *([self.sink.tee.fd] if self.sink.tee is not None else []))
