"""What every relay task shares: the copying task on the loop, drained/settled progress and
close(). Never copies bytes itself (subclasses do) and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from pyshim.io.fdwait import pending_bytes


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
