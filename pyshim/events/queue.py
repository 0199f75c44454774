"""The publisher's queue: bounded memory spilling to the spool, per-container ordering and the
lanes held back by a refused event. Owns what goes next; never talks to containerd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from google.protobuf.message import DecodeError

from pyshim.events.envelope import Item
from pyshim.events.spool import RECORD_HEADER, SPOOL_NAME, Spool, SpoolCorrupt

log = logging.getLogger("pyshim.events")


class Refused:
    """A container lane held up by its first event, which containerd refused."""

    __slots__ = ("attempts", "retry_at", "seq")

    def __init__(self, seq: int, attempts: int, retry_at: float) -> None:
        self.seq = seq
        self.attempts = attempts
        self.retry_at = retry_at


class EventQueue:
    """Events waiting for the sender, in publication order; the Publisher's base.

    Queue order: head (memory), then the spool, then tail (memory; only what the spool could
    not take while it held records).
    """

    def __init__(
        self, *, spool_dir: str | None, max_queued: int, max_bytes: int, retry_max: float
    ) -> None:
        self.max_queued = max(1, max_queued)
        self.max_bytes = max_bytes
        self.retry_max = retry_max
        self.spool = Spool(os.path.join(spool_dir, SPOOL_NAME)) if spool_dir else None
        # Dicts: ordered, and an item leaves from anywhere in O(1) when another container's
        # event overtakes it.
        self._head: dict[int, Item] = {}
        self._tail: dict[int, Item] = {}
        self._memory_bytes = 0
        self._seq = 0
        # Container lanes whose first event containerd refused, by container id.
        self._refused: dict[str, Refused] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._overflowing = False
        self._spool_retry_at = 0.0
        #: Events dropped (refused for good, or overflow without a spool).
        self.dropped = 0
        if self.spool is not None:
            try:
                self.spool.open()
            except OSError as error:
                log.error("event spool %s unusable: %s", self.spool.path, error)
        self._update_idle()

    @property
    def pending(self) -> int:
        """Events queued and not yet delivered (in memory and in the spool)."""
        return len(self._head) + len(self._tail) + (self.spool.count if self.spool else 0)

    @property
    def in_memory(self) -> tuple[int, int]:
        """(envelopes, bytes) held in memory."""
        return len(self._head) + len(self._tail), self._memory_bytes

    def _fits(self, size: int) -> bool:
        return (len(self._head) + len(self._tail) < self.max_queued
                and self._memory_bytes + size <= self.max_bytes)

    def _enqueue(self, item: Item) -> None:
        spooled = self.spool.count if self.spool else 0
        if not self._tail and not spooled and self._fits(len(item.data)):
            self._remember(self._head, item)
        elif not self._tail and self._spool_append(item):
            pass
        elif item.critical or self._fits(len(item.data)):
            self._remember(self._tail, item)
        else:
            self.dropped += 1
            if not self._overflowing:
                log.error("event queue full (%d in memory, no spool): dropping %r and other "
                          "events but exits and OOMs until it drains", self.pending, item)
            self._overflowing = True
            return
        self._idle.clear()
        self._wakeup.set()

    def _remember(self, queue: dict[int, Item], item: Item) -> None:
        queue[item.seq] = item
        self._memory_bytes += len(item.data)

    def _spool_append(self, item: Item) -> bool:
        if self.spool is None:
            return False
        try:
            self.spool.append(item.data)
        except OSError as error:
            if not self._overflowing:
                log.error("event spool %s: cannot write (%s)", self.spool.path, error)
            self._overflowing = True
            return False
        if not self._overflowing:
            log.warning("event queue full (%d in memory): spooling to %s",
                        len(self._head), self.spool.path)
        self._overflowing = True
        return True

    def _forget(self, item: Item) -> None:
        del self._head[item.seq]
        self._memory_bytes -= len(item.data)
        self._update_idle()

    def _update_idle(self) -> None:
        if not self.pending:
            self._idle.set()
            self._overflowing = False

    def _refill(self) -> None:
        """Move spooled records, then the tail, into the head as memory allows."""
        spool = self.spool
        if spool is not None and spool.count and time.monotonic() >= self._spool_retry_at:
            try:
                while spool.count and (not self._head or self._fits(spool.peek_size())):
                    data = spool.read()
                    self._seq += 1
                    try:
                        self._remember(self._head, Item.from_bytes(self._seq, data))
                    except DecodeError as error:
                        self.dropped += 1
                        log.error("event spool %s: dropping an undecodable record: %s",
                                  spool.path, error)
            except SpoolCorrupt as error:
                self.dropped += spool.discard()
                log.error("%s: its remaining events are lost", error)
            except OSError as error:
                log.error("event spool %s: cannot read (%s); trying again later",
                          spool.path, error)
                self._spool_retry_at = time.monotonic() + self.retry_max
        if self._tail and not (spool is not None and spool.count):
            self._head.update(self._tail)
            self._tail.clear()
        self._update_idle()

    def _next(self, now: float) -> Item | None:
        """The oldest event whose container is not waiting for a refused event's retry."""
        held: set[str] = set()
        for item in self._head.values():
            if item.container in held:
                continue
            refused = self._refused.get(item.container)
            if refused is not None and refused.retry_at > now:
                held.add(item.container)
                continue
            return item
        return None

    def _next_wake(self, now: float) -> float | None:
        """Seconds until a held-up lane (or the unreadable spool) may go again."""
        times = [refused.retry_at for refused in self._refused.values()]
        if self.spool is not None and self.spool.count:
            times.append(self._spool_retry_at)
        return max(0.0, min(times) - now) if times else None

    def _persist(self) -> None:
        """Rewrite the spool as every undelivered event, in order: head, spool, tail."""
        spool = self.spool
        if spool is None or not (self._head or self._tail):
            return
        records = [RECORD_HEADER.pack(len(item.data)) + item.data
                   for item in self._head.values()]
        tail = [RECORD_HEADER.pack(len(item.data)) + item.data for item in self._tail.values()]
        temp = f"{spool.path}.{os.getpid()}.new"
        try:
            records.append(spool.remaining())
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb", closefd=False) as file:
                    file.write(b"".join(records + tail))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, spool.path)
        except OSError as error:
            log.error("event spool %s: cannot keep %d undelivered events: %s",
                      spool.path, self.pending, error)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return
        log.warning("kept %d undelivered events in %s", self.pending, spool.path)
