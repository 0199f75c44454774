"""The container's stdin, written by many sources in turn (attach clients), on the event loop.

Owns the write end (a pipe, or a dup of the pty master once it exists) and the bytes queued for
it. Never reads a source itself: a source hands a chunk over and waits for `wait_flushed()`
before reading more, so a container that does not read its stdin holds back its writers, not
the loop. Closing it is the container's EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os

log = logging.getLogger("pyshim.io")


class StdinWriter:
    """Queued, non-blocking writes to one fd. The fd may come later (`set_target`: a terminal
    arrives after runc ran); input queued before it is written then, in order."""

    def __init__(self, fd: int | None = None, *, name: str = "stdin") -> None:
        self.name = name
        self._fd = -1
        self._queue = bytearray()
        self._closed = False
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._watching = False
        self.written = 0
        if fd is not None:
            self.set_target(fd)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued(self) -> int:
        return len(self._queue)

    def set_target(self, fd: int) -> None:
        """Start writing to fd (owned from now on; closed by close())."""
        if self._closed:
            os.close(fd)
            return
        os.set_blocking(fd, False)
        self._fd = fd
        self._flush()

    def write(self, data: bytes) -> None:
        """Queue data (dropped once closed: nobody reads it any more)."""
        if self._closed or not data:
            return
        self._queue += data
        self._flushed.clear()
        self._flush()

    async def wait_flushed(self) -> None:
        """Until everything queued has been written (or the stdin was closed)."""
        await self._flushed.wait()

    def close(self) -> None:
        """The container sees EOF (once no other writer is left). Unwritten input is dropped."""
        self._closed = True
        self._queue.clear()
        self._unwatch()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._flushed.set()

    def _flush(self) -> None:
        while self._queue and self._fd >= 0:
            try:
                written = os.write(self._fd, self._queue)
            except BlockingIOError:
                self._watch()
                return
            except OSError as error:
                # EPIPE: the container closed its stdin; EIO: the terminal is gone.
                if error.errno not in (errno.EPIPE, errno.EIO):
                    log.warning("%s: write failed: %s", self.name, error)
                self.close()
                return
            self.written += written
            del self._queue[:written]
        if not self._queue:
            self._unwatch()
            self._flushed.set()

    def _watch(self) -> None:
        if not self._watching:
            asyncio.get_running_loop().add_writer(self._fd, self._flush)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_writer(self._fd)
            self._watching = False
