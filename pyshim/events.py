"""Task events to containerd: `Events/Forward` on $TTRPC_ADDRESS, in order, never dropped.

One FIFO queue drained by one sender, so events leave in the order they were published; a
failed send is retried with capped back-off (head of line, so order holds under failure too)
for as long as the shim lives. Never raises into the caller and never blocks it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.ttrpc import Client, InvalidArgument, RPCError

log = logging.getLogger("pyshim.events")

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
SEND_TIMEOUT = 5.0
# Back-off between attempts: 0.1 s doubling up to 5 s, forever (containerd restarts can take
# minutes; runc-v2 gives up after 15 s and loses the exit).
RETRY_FIRST = 0.1
RETRY_MAX = 5.0


def envelope(namespace: str, topic: str, event: Message) -> forward_pb2.ForwardRequest:
    """A Forward request; the type URL is the bare full name, as containerd expects."""
    request = forward_pb2.ForwardRequest()
    request.envelope.timestamp.GetCurrentTime()
    request.envelope.namespace = namespace
    request.envelope.topic = topic
    request.envelope.event.type_url = event.DESCRIPTOR.full_name
    request.envelope.event.value = event.SerializeToString()
    return request


class Publisher:
    """Queue of events for one containerd namespace; start() launches the sender."""

    def __init__(self, address: str, namespace: str) -> None:
        self.address = address
        self.namespace = namespace
        self._queue: collections.deque[forward_pb2.ForwardRequest] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: Client | None = None
        self._sender: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._run(), name="publisher")

    def publish(self, topic: str, event: Message) -> None:
        """Queue an event; the timestamp is taken now, not when it is finally delivered."""
        if not self.address:
            log.warning("no TTRPC_ADDRESS: event %s not published", topic)
            return
        self._queue.append(envelope(self.namespace, topic, event))
        self._idle.clear()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued is delivered; False if timeout came first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to timeout), then stop."""
        if not await self.flush(timeout):
            log.warning("shutting down with %d undelivered events", len(self._queue))
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        await self._disconnect()

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            request = self._queue[0]
            try:
                await self._send(request)
            except InvalidArgument as error:
                # containerd will refuse this one forever; keeping it would block the rest.
                log.error("containerd refused event %s: %s", request.envelope.topic, error)
            except (RPCError, OSError, TimeoutError) as error:
                log.warning(
                    "publishing %s failed (%s); retrying in %.1f s",
                    request.envelope.topic, error, delay,
                )
                await self._disconnect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._queue.popleft()
            self.sent += 1
            delay = RETRY_FIRST

    async def _send(self, request: forward_pb2.ForwardRequest) -> None:
        if self._client is None or self._client.closed:
            self._client = await Client.connect(self.address, timeout=SEND_TIMEOUT)
        started = time.monotonic()
        await self._client.call(
            EVENTS_SERVICE, "Forward", request, empty_pb2.Empty,
            timeout=SEND_TIMEOUT,
            metadata={"containerd-namespace-ttrpc": self.namespace},
        )
        log.debug("published %s in %.1f ms", request.envelope.topic,
                  (time.monotonic() - started) * 1000)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
