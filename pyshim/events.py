"""Task events to containerd: `Events/Forward` on $TTRPC_ADDRESS, in order, never lost to a
full queue, never wedged by one bad event.

Events leave in the order they were published, per container (spec §4.4): one sender, one
queue, lanes keyed by container id. containerd unreachable (transport errors) → everything
waits and is retried with capped back-off for as long as the shim lives. containerd refusing
one event (an application error) → that event's container waits for its retries while other
containers' events overtake it; after a few refusals the event is dropped, except /tasks/exit
and /tasks/oom, which are retried for as long as the shim lives. Memory holds a bounded number
of envelopes; the overflow goes to an append-only spool file (given a directory) and is read
back in order. The sender is supervised (restarted if it crashes). publish() never raises into
the caller and never blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import struct
import time

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message

from pyshim.protos.containerd.events import task_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.ttrpc import (
    Cancelled,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    Unavailable,
)

log = logging.getLogger("pyshim.events")

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
SEND_TIMEOUT = 5.0
# Back-off between attempts: 0.1 s doubling up to 5 s (each jittered down to half), forever
# (containerd restarts can take minutes; runc-v2 gives up after 15 s and loses the exit).
RETRY_FIRST = 0.1
RETRY_MAX = 5.0
# An event containerd refuses this many times (application errors, not transport) is dropped,
# so that its container's later events can go; exits and OOMs never are.
REFUSALS_BEFORE_DROP = 5
# Envelopes are ~100-400 bytes: 1024 of them is minutes of a busy container's events.
MAX_QUEUED = 1024
MAX_QUEUED_BYTES = 1 << 20
SPOOL_NAME = "events.spool"
# Never dropped while the shim lives (CRI needs both to report how a container ended).
CRITICAL_TOPICS = frozenset({"/tasks/exit", "/tasks/oom"})

# Errors meaning containerd (or the way to it) is down or slow, not that it refused this event:
# every event would get the same answer, so everything waits.
_TRANSPORT_ERRORS = (Unavailable, DeadlineExceeded, Cancelled, OSError, TimeoutError)
_RECORD_HEADER = struct.Struct(">I")
# ttrpc's message limit; a longer record in the spool can only be garbage.
_MAX_RECORD = 4 << 20


def envelope(namespace: str, topic: str, event: Message) -> forward_pb2.ForwardRequest:
    """A Forward request; the type URL is the bare full name, as containerd expects."""
    request = forward_pb2.ForwardRequest()
    # Timestamp.GetCurrentTime's value (now, to the microsecond) without its Python code
    # (datetime, calendar.timegm), which would be copied into each daemon at its first event.
    now_us = time.time_ns() // 1000
    request.envelope.timestamp.seconds = now_us // 1_000_000
    request.envelope.timestamp.nanos = now_us % 1_000_000 * 1000
    request.envelope.namespace = namespace
    request.envelope.topic = topic
    request.envelope.event.type_url = event.DESCRIPTOR.full_name
    request.envelope.event.value = event.SerializeToString()
    return request


def container_of(request: forward_pb2.ForwardRequest) -> str:
    """The container an envelope is about: field 1 (container_id) of every containerd task
    event; read through TaskOOM, whose only field it is (the others are kept as unknown)."""
    try:
        return task_pb2.TaskOOM.FromString(request.envelope.event.value).container_id
    except DecodeError:
        return ""


class _Item:
    """One queued envelope: serialized (its size is what memory is bounded by)."""

    __slots__ = ("container", "critical", "data", "seq", "topic")

    def __init__(self, seq: int, data: bytes, topic: str, container: str) -> None:
        self.seq = seq
        self.data = data
        self.topic = topic
        self.container = container
        self.critical = topic in CRITICAL_TOPICS

    @classmethod
    def from_bytes(cls, seq: int, data: bytes) -> _Item:
        request = forward_pb2.ForwardRequest.FromString(data)
        return cls(seq, data, request.envelope.topic, container_of(request))

    def __repr__(self) -> str:
        return f"{self.topic} of {self.container or '?'}"


class _Refused:
    """A container lane held up by its first event, which containerd refused."""

    __slots__ = ("attempts", "retry_at", "seq")

    def __init__(self, seq: int, attempts: int, retry_at: float) -> None:
        self.seq = seq
        self.attempts = attempts
        self.retry_at = retry_at


class SpoolCorrupt(Exception):
    """The spool file holds something that is not a whole record where one should be."""


class Spool:
    """Append-only file of records (4-byte big-endian length, serialized ForwardRequest),
    read back in order; emptied (truncated) whenever everything in it has been read.

    Records left by an earlier process (a shim that died with events in it) are read first; a
    record cut short by that death is discarded.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._fd = -1
        self._read_at = 0
        self._end = 0

    def open(self) -> None:
        if self._fd >= 0:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fd).st_size
            at = count = 0
            while at + _RECORD_HEADER.size <= size:
                (length,) = _RECORD_HEADER.unpack(os.pread(fd, _RECORD_HEADER.size, at))
                if length > _MAX_RECORD or at + _RECORD_HEADER.size + length > size:
                    break
                at += _RECORD_HEADER.size + length
                count += 1
            if at != size:
                log.warning("event spool %s: discarding %d bytes of a cut-off record",
                            self.path, size - at)
                os.ftruncate(fd, at)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._end, self.count, self._read_at = fd, at, count, 0
        if count:
            log.info("event spool %s: %d events from an earlier run to deliver", self.path, count)
        elif at == 0:
            self._reset()

    def append(self, data: bytes) -> None:
        """Write one record; on failure nothing of it stays in the file."""
        self.open()
        record = _RECORD_HEADER.pack(len(data)) + data
        at = self._end
        try:
            while record:
                written = os.pwrite(self._fd, record, at)
                record = record[written:]
                at += written
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
            raise
        self._end = at
        self.count += 1

    def peek_size(self) -> int:
        """Length of the next record's data (there must be one)."""
        header = os.pread(self._fd, _RECORD_HEADER.size, self._read_at)
        if len(header) != _RECORD_HEADER.size:
            raise SpoolCorrupt(f"event spool {self.path}: header cut off at {self._read_at}")
        length: int = _RECORD_HEADER.unpack(header)[0]
        if length > _MAX_RECORD:
            raise SpoolCorrupt(f"event spool {self.path}: record of {length} bytes")
        return length

    def read(self) -> bytes:
        """The next record's data (there must be one)."""
        length = self.peek_size()
        data = os.pread(self._fd, length, self._read_at + _RECORD_HEADER.size)
        if len(data) != length:
            raise SpoolCorrupt(f"event spool {self.path}: record cut off at {self._read_at}")
        self._read_at += _RECORD_HEADER.size + length
        self.count -= 1
        if not self.count:
            self._reset()
        return data

    def remaining(self) -> bytes:
        """All unread records, as they are in the file."""
        if self._fd < 0 or not self.count:
            return b""
        return os.pread(self._fd, self._end - self._read_at, self._read_at)

    def discard(self) -> int:
        """Forget every unread record (after corruption); returns how many there were."""
        count, self.count = self.count, 0
        self._reset()
        return count

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _reset(self) -> None:
        # Emptied: start over at offset 0 so the file never grows past one overflow's worth.
        self._read_at = self._end = 0
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)


class Publisher:
    """Queue of events for one containerd namespace; start() launches the sender.

    `spool_dir`: where overflow beyond `max_queued` envelopes or `max_bytes` bytes in memory
    goes (file `events.spool`, one Publisher per directory). Without one, or when the spool
    cannot be written, overflow is dropped, except exits and OOMs, which are kept in memory
    past the bound.
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        spool_dir: str | None = None,
        max_queued: int = MAX_QUEUED,
        max_bytes: int = MAX_QUEUED_BYTES,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
        refusals_before_drop: int = REFUSALS_BEFORE_DROP,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.max_queued = max(1, max_queued)
        self.max_bytes = max_bytes
        self.retry_first = retry_first
        self.retry_max = retry_max
        self.refusals_before_drop = max(1, refusals_before_drop)
        self.spool = Spool(os.path.join(spool_dir, SPOOL_NAME)) if spool_dir else None
        # Queue order: _head (memory), then the spool, then _tail (memory; only what the spool
        # could not take while it held records). Dicts: ordered, and an item leaves from
        # anywhere in O(1) when another container's event overtakes it.
        self._head: dict[int, _Item] = {}
        self._tail: dict[int, _Item] = {}
        self._memory_bytes = 0
        self._seq = 0
        # Container lanes whose first event containerd refused, by container id.
        self._refused: dict[str, _Refused] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._client: Client | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        self._overflowing = False
        self._spool_retry_at = 0.0
        #: Events delivered, dropped (refused for good, or overflow without a spool) and sender
        #: restarts after a crash.
        self.sent = 0
        self.dropped = 0
        self.restarts = 0
        if self.spool is not None:
            try:
                self.spool.open()
            except OSError as error:
                log.error("event spool %s unusable: %s", self.spool.path, error)
        self._update_idle()

    # -- public API ------------------------------------------------------------------------

    def start(self) -> None:
        if self._sender is None or self._sender.done():
            self._closing = False
            self._sender = asyncio.get_running_loop().create_task(
                self._supervise(), name="publisher")

    def publish(self, topic: str, event: Message) -> None:
        """Queue an event; the timestamp is taken now, not when it is finally delivered."""
        if not self.address:
            log.warning("no TTRPC_ADDRESS: event %s not published", topic)
            return
        try:
            self._seq += 1
            item = _Item(
                self._seq,
                envelope(self.namespace, topic, event).SerializeToString(),
                topic,
                str(getattr(event, "container_id", "")),
            )
            self._enqueue(item)
            if self._sender is not None and self._sender.done() and not self._closing:
                log.error("event sender was not running; starting it again")
                self.start()
        except Exception:
            log.exception("cannot queue event %s", topic)

    @property
    def pending(self) -> int:
        """Events queued and not yet delivered (in memory and in the spool)."""
        return len(self._head) + len(self._tail) + (self.spool.count if self.spool else 0)

    @property
    def in_memory(self) -> tuple[int, int]:
        """(envelopes, bytes) held in memory."""
        return len(self._head) + len(self._tail), self._memory_bytes

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued is delivered; False if timeout came first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to timeout), then stop.

        What is still undelivered then is written to the spool (if there is one), in order,
        for a later Publisher on the same directory.
        """
        if not await self.flush(timeout):
            log.warning("shutting down with %d undelivered events", self.pending)
        self._closing = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._disconnect()
        self._persist()
        if self.spool is not None:
            self.spool.close()

    # -- queue -----------------------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        return (len(self._head) + len(self._tail) < self.max_queued
                and self._memory_bytes + size <= self.max_bytes)

    def _enqueue(self, item: _Item) -> None:
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

    def _remember(self, queue: dict[int, _Item], item: _Item) -> None:
        queue[item.seq] = item
        self._memory_bytes += len(item.data)

    def _spool_append(self, item: _Item) -> bool:
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

    def _forget(self, item: _Item) -> None:
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
                        self._remember(self._head, _Item.from_bytes(self._seq, data))
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

    def _next(self, now: float) -> _Item | None:
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
        records = [_RECORD_HEADER.pack(len(item.data)) + item.data
                   for item in self._head.values()]
        tail = [_RECORD_HEADER.pack(len(item.data)) + item.data for item in self._tail.values()]
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

    # -- sender ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the sender; if it dies of anything but cancellation, log it and start again."""
        crashes = 0
        while True:
            sent = self.sent
            try:
                await self._run()
            except Exception:
                self.restarts += 1
                crashes = 1 if self.sent != sent else crashes + 1
                delay = min(self.retry_first * 2 ** min(crashes - 1, 32), self.retry_max)
                log.exception("event sender crashed; restarting it in %.1f s", delay)
                await self._disconnect()
                await asyncio.sleep(delay)

    async def _run(self) -> None:
        delay = self.retry_first
        while True:
            self._refill()
            now = time.monotonic()
            item = self._next(now)
            if item is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_wake(now)):
                        await self._wakeup.wait()
                continue
            try:
                await self._send(item)
            except _TRANSPORT_ERRORS as error:
                log.warning("publishing %r failed (%s); retrying in %.1f s", item, error, delay)
                await self._disconnect()
                # Jittered: the shims of a node all start retrying when containerd dies, and
                # in step they would all hit the restarted daemon in the same instant.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.retry_max)
                continue
            except Exception as error:  # refused by containerd, or not sendable at all
                self._refuse(item, error)
                continue
            self._refused.pop(item.container, None)
            self._forget(item)
            self.sent += 1
            delay = self.retry_first

    def _refuse(self, item: _Item, error: Exception) -> None:
        """containerd said no to this one event: hold its container back, or drop it."""
        previous = self._refused.get(item.container)
        attempts = previous.attempts + 1 if previous and previous.seq == item.seq else 1
        # InvalidArgument: containerd judged the envelope itself; the same bytes fail again.
        final = isinstance(error, InvalidArgument) or attempts >= self.refusals_before_drop
        if final and not item.critical:
            log.error("containerd refused event %r %d time(s) (%s): dropped", item, attempts,
                      error)
            self._refused.pop(item.container, None)
            self._forget(item)
            self.dropped += 1
            return
        delay = min(self.retry_first * 2 ** min(attempts - 1, 32), self.retry_max)
        if attempts & (attempts - 1) == 0:  # 1, 2, 4, 8, …: a refused exit is not log spam
            log.warning("containerd refused event %r (%s), attempt %d; retrying in %.1f s, "
                        "its container's later events wait", item, error, attempts, delay)
        self._refused[item.container] = _Refused(item.seq, attempts, time.monotonic() + delay)

    async def _send(self, item: _Item) -> None:
        request = forward_pb2.ForwardRequest.FromString(item.data)
        if self._client is None or self._client.closed:
            self._client = await Client.connect(self.address, timeout=SEND_TIMEOUT)
        started = time.monotonic()
        await self._client.call(
            EVENTS_SERVICE, "Forward", request, empty_pb2.Empty,
            timeout=SEND_TIMEOUT,
            metadata={"containerd-namespace-ttrpc": self.namespace},
        )
        log.debug("published %r in %.1f ms", item, (time.monotonic() - started) * 1000)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
