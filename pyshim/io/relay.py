"""One-way byte relay between two non-blocking fds on the event loop (the task machinery is
relay_task.py's, fd readiness fdwait.py's, waiting for a FIFO reader reader_watch.py's).

splice(2) when the kernel allows it (pipe to pipe/FIFO: no copy through Python), read/write
otherwise. Back-pressure instead of buffering: when the destination is full we stop reading.
Never closes an fd it was not given ownership of, never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable

from pyshim.io.fdwait import pending_bytes, wait_fd, writable_now
from pyshim.io.reader_watch import ReaderWatch
from pyshim.io.relay_task import RelayTask
from pyshim.io.spool import Spool

# Importable from here too, as before the split (pyshim.conmon.attach reads wait_fd here).
__all__ = ["CHUNK", "YIELD_EVERY", "ReaderWatch", "Relay", "RelayTask", "pending_bytes",
           "wait_fd"]

log = logging.getLogger("pyshim.io")

CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
# Bytes a relay moves before it lets the loop run other work.
YIELD_EVERY = 4 << 20


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
        self._holding = False  # output held since the reader went away (said once)
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
                if self._buffer or (not self._discard and not writable_now(self.dst)):
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
                    return self._spliced_into_no_reader()
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

    def _spliced_into_no_reader(self) -> int | None:
        """splice's EPIPE: it checks for a reader before its input, so it also says EPIPE at
        the input's EOF (a `ctr run -d` container exiting), where read/write sees the EOF
        and nothing is held: that is the end, with no reader to wait for."""
        try:
            data = os.read(self.src, _READ_CHUNK)
        except BlockingIOError:
            data = None  # writers still there, nothing to read yet
        except OSError as error:
            if error.errno != errno.EIO:
                raise
            data = b""
        if data == b"":
            return None
        if data:
            self._buffer = data  # held (or dropped) by _reader_lost, like a failed write's
        self._reader_lost()
        return 0

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
        self._reader_gone = True
        if self._buffer:
            self._hold(self._buffer)
            self._buffer = b""
        if self._reader_watch is None:
            self._reader_watch = ReaderWatch(self.dst, self._reader_back, name=self.name)
        self._progress.set()

    def _hold(self, data: bytes) -> None:
        """Into the spool; said once per absence (not when the reader left with the output
        at its end: a `ctr run -d` container's exit, where nothing is ever held)."""
        assert self._spool is not None
        if not self._holding:
            self._holding = True
            log.warning("relay %s: reader went away; holding output until it returns", self.name)
        self._spool.append(data)

    def _reader_back(self) -> None:
        self._reader_watch = None
        if self._reader_gone and self._holding:
            log.info("relay %s: a reader is back; replaying %d bytes", self.name,
                     len(self._spool) if self._spool is not None else 0)
        self._reader_gone = self._holding = False
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
                self._hold(data)
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
