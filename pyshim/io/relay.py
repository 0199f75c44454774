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
import threading
from collections.abc import Callable

from pyshim.io.spool import Spool

log = logging.getLogger("pyshim.io")

CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
# Bytes a relay moves before it lets the loop run other work.
YIELD_EVERY = 4 << 20


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
        self._wakeup = asyncio.Event()
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

    def is_settled(self) -> bool:
        """Whether copying can make no more progress by itself: ended, or (see Relay) every
        byte of src read and only an absent reader could take the rest."""
        return self.done

    async def settled(self) -> None:
        """Until is_settled(): what delete waits for. Waiting longer for a reader that is not
        there would only hold up the delete (and a containerd restarting behind it)."""
        while not self.is_settled():
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
    owns then. When dst's reader goes away (EPIPE), a relay with a `spool` (a client's FIFO)
    keeps reading src into the spool, so the container never blocks, waits for a reader to
    open the FIFO again and replays the spool to it in order; one without a spool discards
    further input (a dead logging binary).
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
        spool: Spool | None = None,
    ) -> None:
        super().__init__(src, name=name)
        self.dst = dst
        self._close_src = close_src
        self._close_dst = close_dst
        self._on_done = on_done
        self._use_splice = True
        self._buffer = b""  # read/write mode only: bytes read but not yet written
        self._discard = False
        self._spool = spool
        self._reader_gone = False
        self._reader_watch: ReaderWatch | None = None
        self._src_eof = False
        self.copied = 0

    def start(self) -> None:
        self._start(self.src, self.dst)

    def _unwritten(self) -> bool:
        if self._reader_gone:
            return False  # nobody to wait for: the spool holds it until a reader returns
        return bool(self._buffer) or bool(self._spool is not None and len(self._spool))

    def is_drained(self) -> bool:
        if self._reader_gone and not self.done:
            return self._src_eof or pending_bytes(self.src) == 0
        return super().is_drained()

    def is_settled(self) -> bool:
        return self.done or (self._reader_gone and self._src_eof)

    # ---------------------------------------------------------------------------- copying

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        since_yield = 0
        try:
            while True:
                if self._reader_gone or (self._spool is not None and len(self._spool)):
                    if await self._spooling_step(loop):
                        return
                    continue
                moved = self._step()
                if moved is None:  # EOF
                    return
                if moved > 0:
                    self.copied += moved
                    self._progress.set()
                    since_yield += moved
                    if since_yield >= YIELD_EVERY:
                        # A fast producer must not keep the loop from every other container.
                        since_yield = 0
                        await asyncio.sleep(0)
                    continue
                if self._reader_gone:
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
                    self._reader_lost()
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
            self._reader_lost()
            return 0
        self._buffer = self._buffer[written:]
        return written

    def _reader_lost(self) -> None:
        if self._spool is None:
            log.warning("relay %s: reader went away, discarding further output", self.name)
            self._discard = True
            self._buffer = b""
            return
        if not self._reader_gone:
            log.warning("relay %s: reader went away; holding output until it returns", self.name)
        self._reader_gone = True
        if self._buffer:
            self._spool.append(self._buffer)
            self._buffer = b""
        if self._reader_watch is None:
            self._reader_watch = ReaderWatch(self.dst, self._reader_back, name=self.name)
        self._progress.set()

    def _reader_back(self) -> None:
        self._reader_watch = None
        if self._reader_gone:
            log.info("relay %s: a reader is back; replaying %d bytes", self.name,
                     len(self._spool) if self._spool is not None else 0)
        self._reader_gone = False
        self._progress.set()
        self._wakeup.set()

    async def _spooling_step(self, loop: asyncio.AbstractEventLoop) -> bool:
        """One step while the spool is in use; True when copying is over (EOF, all out)."""
        assert self._spool is not None
        if not self._reader_gone:
            # A reader: replay the oldest bytes first; src waits (back-pressure as usual).
            chunk = self._spool.peek(_READ_CHUNK)
            if not chunk:
                return self._src_eof
            try:
                written = os.write(self.dst, chunk)
            except BlockingIOError:
                await wait_fd(loop, self.dst, write=True)
                return False
            except BrokenPipeError:
                self._reader_lost()
                return False
            self._spool.consume(written)
            self.copied += written
            self._progress.set()
            return self._src_eof and not len(self._spool)
        # No reader: keep the container from blocking by moving its output into the spool.
        if not self._src_eof:
            try:
                data = os.read(self.src, CHUNK)
            except BlockingIOError:
                data = None
            except OSError as error:
                if error.errno != errno.EIO:
                    raise
                data = b""
            if data:
                self._spool.append(data)
                self._progress.set()
                await asyncio.sleep(0)
                return False
            if data == b"":
                self._src_eof = True
                self._progress.set()
        # Wait for more output or for a reader, whichever comes first.
        self._wakeup.clear()
        if self._src_eof:
            await self._wakeup.wait()
        else:
            readable = asyncio.ensure_future(wait_fd(loop, self.src, write=False))
            woken = asyncio.ensure_future(self._wakeup.wait())
            try:
                await asyncio.wait({readable, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                readable.cancel()
                woken.cancel()
        return False

    def _discard_input(self) -> int | None:
        try:
            data = os.read(self.src, _READ_CHUNK)
        except BlockingIOError:
            return 0
        except OSError:
            return None
        return len(data) if data else None

    def _finish(self) -> None:
        if self._reader_watch is not None:
            self._reader_watch.cancel()
            self._reader_watch = None
        if self._spool is not None:
            self._spool.close()
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


class ReaderWatch:
    """Tells the loop when a FIFO we write has a reader again, without polling.

    A thread blocks in open(O_WRONLY) of the FIFO through an O_PATH handle of our own (so
    neither a FIFO path removed meanwhile nor our fd being closed matters); the kernel returns
    it when a reader opens. A thread of its own, not the executor: many streams may wait at
    once, for as long as containerd is away. cancel() opens a reader of ours, kept until the
    thread is out, so the thread returns whether it is already blocked or not yet.
    """

    def __init__(self, fd: int, callback: Callable[[], None], *, name: str) -> None:
        self._handle = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        self._path = f"/proc/self/fd/{self._handle}"
        self._wake = -1
        self._loop = asyncio.get_running_loop()
        self._callback: Callable[[], None] | None = callback
        thread = threading.Thread(target=self._wait, name=f"reader watch {name}", daemon=True)
        thread.start()

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
