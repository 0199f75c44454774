"""Relaying a container's output into a CRI log file (and, optionally, on to an fd).

Owns reading the pipe on the event loop and handing each chunk to a CriLogWriter, then to a
`tee` fd with back-pressure. Never formats a record (pyshim.logs does) and never closes the
writer (its owner does: one writer serves both streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from dataclasses import dataclass

from pyshim.io.fifo import OutputTarget
from pyshim.io.relay import RelayTask, wait_fd
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


class LogRelay(RelayTask):
    """Copies src into the sink until src reaches EOF (every writer gone) or it is closed.

    At EOF the stream's last partial line is flushed (a P record). A failing log write is
    logged once and the bytes still go to the tee; a tee whose reader went away is dropped.
    """

    def __init__(self, src: int, sink: LogSink, *, name: str) -> None:
        super().__init__(src, name=name)
        self.sink = sink
        self._pending = b""  # read but not yet written to the tee
        self._log_failed = False

    def start(self) -> None:
        self._start(self.src, *([self.sink.tee.fd] if self.sink.tee is not None else []))

    def _unwritten(self) -> bool:
        return bool(self._pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._pending:
                    await self._write_tee(loop)
                    continue
                try:
                    data = os.read(self.src, _READ_CHUNK)
                except BlockingIOError:
                    self._progress.set()
                    await wait_fd(loop, self.src, write=False)
                    continue
                except OSError as error:
                    if error.errno == errno.EIO:  # a pty master once every slave is closed
                        return
                    raise
                if not data:
                    return
                self._log(data)
                if self.sink.tee is not None:
                    self._pending = data
                self._progress.set()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("log relay %s failed", self.name)
        finally:
            self._finish()

    def _log(self, data: bytes) -> None:
        try:
            self.sink.writer.write(self.sink.stream, data)
        except (OSError, ValueError) as error:
            if not self._log_failed:
                log.error("%s: cannot write the log: %s", self.name, error)
                self._log_failed = True

    async def _write_tee(self, loop: asyncio.AbstractEventLoop) -> None:
        tee = self.sink.tee
        assert tee is not None
        try:
            written = os.write(tee.fd, self._pending)
        except BlockingIOError:
            await wait_fd(loop, tee.fd, write=True)
            return
        except OSError:  # EPIPE and friends: the reader went away; keep logging
            self._pending = b""
            self.sink.tee = None
            tee.close()
            return
        self._pending = self._pending[written:]
        self._progress.set()

    def _finish(self) -> None:
        if self.src >= 0:
            with contextlib.suppress(OSError):
                os.close(self.src)
            self.src = -1
            with contextlib.suppress(OSError, ValueError):
                self.sink.writer.flush(self.sink.stream)
        self._progress.set()
