"""asyncio ttrpc client over a unix socket.

Owns one connection: concurrent calls matched by stream id, per-call deadlines, and failing
every call in flight with ConnectionClosed when the connection drops. Protocol rules live in
connection.ClientConnection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TypeVar, cast

from google.protobuf.message import DecodeError, Message

from pyshim.ttrpc.connection import ClientConnection, FrameIgnored, ResponseReceived
from pyshim.ttrpc.frame import FrameError
from pyshim.ttrpc.status import Code, ConnectionClosed, DeadlineExceeded, Internal, RPCError

log = logging.getLogger("pyshim.ttrpc.client")

ReplyT = TypeVar("ReplyT", bound=Message)


def socket_path(address: str) -> str:
    """A dialable path from containerd's address forms (`unix:///x`, `unix://x`, `/x`)."""
    return address.removeprefix("unix://")


class Client:
    """One ttrpc connection. Create it with `await Client.connect(address)`."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(cls, address: str, *, timeout: float | None = None) -> Client:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_unix_connection(_ClientProtocol, socket_path(address))
        return cls(protocol)

    @property
    def closed(self) -> bool:
        return self._protocol.closed

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        reply_type: type[ReplyT],
        *,
        timeout: float | None = None,
        metadata: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> ReplyT:
        """Send one unary request and wait for its reply.

        Raises the RPCError subclass matching the status (NotFound, …), DeadlineExceeded when
        `timeout` seconds pass first (the server is told the same deadline), and
        ConnectionClosed when the connection is or goes away.
        """
        pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
        payload = await self._protocol.call(
            service, method, request.SerializeToString(), list(pairs), timeout
        )
        try:
            return reply_type.FromString(payload)
        except DecodeError as error:
            raise Internal(f"ttrpc: cannot decode {service}/{method} reply: {error}") from error

    async def close(self) -> None:
        await self._protocol.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._state = ClientConnection()
        self._transport: asyncio.Transport | None = None
        self._calls: dict[int, asyncio.Future[ResponseReceived]] = {}
        self._closed = asyncio.get_running_loop().create_future()
        self._can_write = asyncio.Event()
        self._can_write.set()

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for event in self._state.receive_data(data):
            if isinstance(event, ResponseReceived):
                future = self._calls.pop(event.stream_id, None)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, FrameIgnored):
                log.debug("ignored frame on stream %d: %s", event.stream_id, event.reason)

    def eof_received(self) -> bool | None:
        try:
            self._state.receive_eof()
        except FrameError as error:
            log.warning("server closed the connection inside a frame: %s", error)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(ConnectionClosed())
        self._can_write.set()
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def call(
        self,
        service: str,
        method: str,
        payload: bytes,
        metadata: list[tuple[str, str]],
        timeout: float | None,
    ) -> bytes:
        # The server is told the same deadline (at least 1 ns: 0 would mean none).
        timeout_nano = max(1, int(timeout * 1e9)) if timeout is not None else 0
        try:
            async with asyncio.timeout(timeout):
                await self._can_write.wait()
                if self._transport is None or self._transport.is_closing():
                    raise ConnectionClosed()
                stream_id, frame = self._state.send_request(
                    service, method, payload, timeout_nano, metadata
                )
                future: asyncio.Future[ResponseReceived] = (
                    asyncio.get_running_loop().create_future()
                )
                self._calls[stream_id] = future
                try:
                    self._transport.write(frame)
                    response = await future
                finally:
                    self._calls.pop(stream_id, None)
                    self._state.forget(stream_id)
        except TimeoutError:
            raise DeadlineExceeded(f"{service}/{method}: context deadline exceeded") from None
        if response.code != Code.OK:
            raise RPCError.from_status(response.code, response.message)
        return response.payload

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        await self._closed
