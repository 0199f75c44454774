"""The publisher: the public API (publish, flush, close) and the supervised sender that forwards
the queue to containerd with back-off. Owns retry and refusal policy; never blocks or raises
into a caller of publish().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pyshim.events.envelope import Item, envelope
from pyshim.events.queue import EventQueue, Refused
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

# Errors meaning containerd (or the way to it) is down or slow, not that it refused this event:
# every event would get the same answer, so everything waits.
_TRANSPORT_ERRORS = (Unavailable, DeadlineExceeded, Cancelled, OSError, TimeoutError)


class Publisher(EventQueue):
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
        self.retry_first = retry_first
        self.refusals_before_drop = max(1, refusals_before_drop)
        super().__init__(spool_dir=spool_dir, max_queued=max_queued, max_bytes=max_bytes,
                         retry_max=retry_max)
        self._client: Client | None = None
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        #: Events delivered and sender restarts after a crash (`dropped`: see EventQueue).
        self.sent = 0
        self.restarts = 0

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
            item = Item(
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

    def _refuse(self, item: Item, error: Exception) -> None:
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
        self._refused[item.container] = Refused(item.seq, attempts, time.monotonic() + delay)

    async def _send(self, item: Item) -> None:
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
