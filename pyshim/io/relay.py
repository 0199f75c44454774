"""One-way byte relay between two non-blocking fds on the event loop.

splice(2) when the kernel allows it (pipe to pipe/FIFO: no copy through Python), read/write
otherwise. Back-pressure instead of buffering: when the destination is full we stop reading.
Never closes an fd it was not given ownership of, never blocks the loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import select
import termios
from collections.abc import Callable

log = logging.getLogger("pyshim.io")

CHUNK = 1 << 20
_READ_CHUNK = 1 << 16


def pending_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD); 0 when it cannot be told."""
    size = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, size, True)
    except OSError:
        return 0
    return size[0]


def _writable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


class RelayTask:
    """What every relay shares: a task on the loop copying from `src`, progress for drained(),
    and close(). Subclasses provide _run(), _unwritten() and _finish()."""

    def __init__(self, src: int, *, name: str) -> None:
        self.src = src
        self.name = name
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _start(self, *fds: int) -> None:
        for fd in fds:
            os.set_blocking(fd, False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        """Until src reached EOF (or the relay was closed)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def is_drained(self) -> bool:
        """Whether everything written to src so far has gone out (or copying ended)."""
        return self.done or (not self._unwritten() and pending_bytes(self.src) == 0)

    async def drained(self) -> None:
        """Until is_drained().

        Used after the writer exited: its last bytes are in the pipe by then, and this returns
        once they are through, even if another process still holds the pipe open.
        """
        while not self.is_drained():
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        """Stop copying now (bytes still in src are dropped) and release the fds."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self.wait()
        self._finish()

    async def _run(self) -> None:
        raise NotImplementedError

    def _unwritten(self) -> bool:
        """Whether bytes already read from src still wait to be written."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Release the fds (idempotent)."""
        raise NotImplementedError


class Relay(RelayTask):
    """Copies src → dst until src reaches EOF (every writer gone) or the relay is closed.

    `on_done` runs once when copying ends, whatever the reason; the relay closes the fds it
    owns then. A destination whose reader went away makes the relay discard further input, so
    the writer (the container) never blocks on a dead client.
    """

    def __init__(
        self,
        src: int,
        dst: int,
        *,
        name: str,
        close_src: bool = True,
        close_dst: bool = True,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(src, name=name)
        self.dst = dst
        self._close_src = close_src
        self._close_dst = close_dst
        self._on_done = on_done
        self._use_splice = True
        self._buffer = b""  # read/write mode only: bytes read but not yet written
        self._discard = False
        self.copied = 0

    def start(self) -> None:
        self._start(self.src, self.dst)

    def _unwritten(self) -> bool:
        return bool(self._buffer)

    # ---------------------------------------------------------------------------- copying

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                moved = self._step()
                if moved is None:  # EOF
                    return
                if moved > 0:
                    self.copied += moved
                    self._progress.set()
                    continue
                # Nothing moved: wait for the side that blocks us.
                if self._buffer or (not self._discard and not _writable_now(self.dst)):
                    await wait_fd(loop, self.dst, write=True)
                else:
                    self._progress.set()
                    await wait_fd(loop, self.src, write=False)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("relay %s failed", self.name)
        finally:
            self._finish()

    def _step(self) -> int | None:
        """Move what can be moved now: bytes moved, 0 if blocked, None at EOF."""
        if self._discard:
            return self._discard_input()
        if self._buffer:
            return self._flush()
        if self._use_splice:
            try:
                moved = os.splice(self.src, self.dst, CHUNK, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                return 0
            except OSError as error:
                if error.errno == errno.EINVAL:  # not spliceable (O_APPEND file, tty…)
                    self._use_splice = False
                    return self._step()
                if error.errno == errno.EPIPE:
                    self._start_discarding()
                    return 0
                if error.errno == errno.EIO:  # pty master once every slave is closed
                    return None
                raise
            return None if moved == 0 else moved
        try:
            data = os.read(self.src, _READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError as error:
            if error.errno == errno.EIO:  # pty master once every slave is closed
                return None
            raise
        if not data:
            return None
        self._buffer = data
        self._flush()
        return len(data)

    def _flush(self) -> int:
        try:
            written = os.write(self.dst, self._buffer)
        except BlockingIOError:
            return 0
        except BrokenPipeError:
            self._start_discarding()
            return 0
        self._buffer = self._buffer[written:]
        return written

    def _start_discarding(self) -> None:
        log.warning("relay %s: reader went away, discarding further output", self.name)
        self._discard = True
        self._buffer = b""

    def _discard_input(self) -> int | None:
        try:
            data = os.read(self.src, _READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        return len(data) if data else None

    def _finish(self) -> None:
        if self._close_src:
            with contextlib.suppress(OSError):
                os.close(self.src)
            self._close_src = False
        if self._close_dst:
            with contextlib.suppress(OSError):
                os.close(self.dst)
            self._close_dst = False
        self._progress.set()
        if self._on_done is not None:
            callback, self._on_done = self._on_done, None
            callback()


async def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
    except PermissionError:
        return  # regular files and /dev/null cannot be polled: they are always ready
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
