"""One output pump per container stream, feeding every sink at once (log drivers, attach
clients, a tee): the fan-out conmon-rs and conmon do, on the event loop.

Owns reading the stream's fd and handing each chunk, unchanged and in order, to each sink.
A sink decides its own back-pressure: one that returns a waitable from `blocked()` holds the
pump (and so the container) until it has room; one that must never hold the others (an attach
client) buffers within its own bound or drops. Never formats, never closes a sink's files.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Iterable

from pyshim.io.fdwait import wait_fd
from pyshim.io.relay_task import RelayTask

log = logging.getLogger("pyshim.io")

#: conmon reads at most this much per read (spec §7): a k8s-file record and an attach packet
#: never hold more than one read.
CONMON_CHUNK = 8192


class OutputSink:
    """Something that consumes a process's output. Methods run on the loop and must not
    block it; the defaults make a sink that ignores everything."""

    name = "sink"

    def write(self, stream: str, data: bytes) -> None:
        """One chunk of `stream` ("stdout" or "stderr"), exactly as read."""

    def blocked(self) -> Awaitable[None] | None:
        """None if the sink can take more now; else something to await until it can (the
        pump stops reading meanwhile: back-pressure reaches the container)."""
        return None

    def end(self, stream: str) -> None:
        """`stream` reached EOF (every writer gone): flush what was held for it."""


class Fanout:
    """The sinks of one process, shared by its pumps (stdout and stderr, or the terminal)."""

    def __init__(self, sinks: Iterable[OutputSink] = ()) -> None:
        self.sinks: list[OutputSink] = list(sinks)
        self._failed: set[int] = set()  # ids of sinks whose failure was already logged

    def add(self, sink: OutputSink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: OutputSink) -> None:
        with contextlib.suppress(ValueError):
            self.sinks.remove(sink)

    def write(self, stream: str, data: bytes) -> None:
        for sink in self.sinks:
            try:
                sink.write(stream, data)
            except Exception as error:
                # One sink failing (a full disk under the log) must not starve the others.
                self._report(sink, "write", error)

    def end(self, stream: str) -> None:
        for sink in self.sinks:
            try:
                sink.end(stream)
            except Exception as error:
                self._report(sink, "end", error)

    def blocked(self) -> list[Awaitable[None]]:
        waits = []
        for sink in self.sinks:
            wait = sink.blocked()
            if wait is not None:
                waits.append(wait)
        return waits

    def _report(self, sink: OutputSink, action: str, error: Exception) -> None:
        if id(sink) not in self._failed:
            self._failed.add(id(sink))
            log.error("output sink %s: %s failed: %s", sink.name, action, error)


class OutputPump(RelayTask):
    """Reads `src` (a pipe or a pty master) in chunks of at most `chunk` bytes until EOF and
    hands each chunk to every sink of `fanout` as `stream`.

    EIO counts as EOF (a pty master once every slave is closed). When pumping ends (EOF, or
    close()) each sink's end() is called once and `src` is closed unless close_src=False.
    Use drained() after the writer exited: it returns once every byte it wrote has been
    handed to the sinks.
    """

    def __init__(self, src: int, stream: str, fanout: Fanout, *, name: str,
                 chunk: int = CONMON_CHUNK, close_src: bool = True) -> None:
        super().__init__(src, name=name)
        self.stream = stream
        self.fanout = fanout
        self.chunk = chunk
        self.pumped = 0
        self._close_src = close_src
        self._waiting = False  # a chunk is out, some sink has not taken it yet
        self._ended = False

    def start(self) -> None:
        self._start(self.src)

    def _unwritten(self) -> bool:
        return self._waiting

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = os.read(self.src, self.chunk)
                except BlockingIOError:
                    self._progress.set()
                    await wait_fd(loop, self.src, write=False)
                    continue
                except OSError as error:
                    if error.errno == errno.EIO:
                        break
                    raise
                if not data:
                    break
                self.pumped += len(data)
                self.fanout.write(self.stream, data)
                waits = self.fanout.blocked()
                if waits:
                    self._waiting = True
                    try:
                        await self._wait_for(waits)
                    finally:
                        self._waiting = False
                self._progress.set()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("output pump %s failed", self.name)
        finally:
            self._finish()

    async def _wait_for(self, waits: list[Awaitable[None]]) -> None:
        """Until each blocked sink has room; a failing wait is logged (that sink is not
        waited for again until it blocks again), a cancelled one closes the rest."""
        try:
            while waits:
                try:
                    await waits.pop(0)
                except Exception:
                    log.exception("output pump %s: waiting for a sink failed", self.name)
        finally:
            for wait in waits:  # never awaited (cancelled meanwhile): no "never awaited" noise
                close = getattr(wait, "close", None)
                if close is not None:
                    close()

    def _finish(self) -> None:
        if self._close_src and self.src >= 0:
            with contextlib.suppress(OSError):
                os.close(self.src)
        self._close_src = False
        if not self._ended:
            self._ended = True
            self.fanout.end(self.stream)
        self._progress.set()
