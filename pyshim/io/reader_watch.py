"""Waiting, off the loop, for a FIFO we write to get a reader again (a client reattaching).
Never writes to the FIFO and never blocks the loop; a cancelled watch leaves no thread stuck.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import os
from collections.abc import Callable


class ReaderWatch:
    """Tells the loop when a FIFO we write has a reader again, without polling.

    A thread blocks in open(O_WRONLY) of the FIFO through an O_PATH handle of our own (so
    neither a FIFO path removed meanwhile nor our fd being closed matters); the kernel returns
    it when a reader opens. A thread of its own, not the executor: many streams may wait at
    once, for as long as containerd is away. cancel() opens a reader of ours, kept until the
    thread is out, so the thread returns whether it is already blocked or not yet.
    """

    def __init__(self, fd: int, callback: Callable[[], None], *, name: str) -> None:
        self.name = name
        self._handle = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        self._path = f"/proc/self/fd/{self._handle}"
        self._wake = -1
        self._loop = asyncio.get_running_loop()
        self._callback: Callable[[], None] | None = callback
        # Not threading.Thread: its start() blocks the loop until the new thread has run, a
        # scheduling round trip (milliseconds on a busy host) that an exit report would wait
        # for (a `ctr run -d` container's FIFOs lose their reader as it exits).
        _thread.start_new_thread(self._wait, ())

    def _wait(self) -> None:
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            os.close(fd)  # only the wake-up matters: we keep writing our own fd
        with contextlib.suppress(RuntimeError):  # loop closed: nobody to tell
            self._loop.call_soon_threadsafe(self._done)

    def _done(self) -> None:
        for fd in (self._wake, self._handle):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake = self._handle = -1
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def cancel(self) -> None:
        self._callback = None
        if self._handle >= 0 and self._wake < 0:
            with contextlib.suppress(OSError):
                self._wake = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
