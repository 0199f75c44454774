"""asyncio ttrpc server over unix sockets.

Owns accepting, the peer-credential check, concurrent dispatch, deadlines and back-pressure.
The protocol rules live in connection.ServerConnection; this module only moves bytes and runs
handlers. It never exits the process and never lets one connection's bytes harm another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any, cast

from google.protobuf.message import DecodeError

from pyshim.ttrpc.connection import (
    FrameIgnored,
    RequestReceived,
    RequestRejected,
    ServerConnection,
    encode_error,
    encode_success,
)
from pyshim.ttrpc.frame import FrameError
from pyshim.ttrpc.proto import ttrpc_pb2
from pyshim.ttrpc.service import CallContext, Service
from pyshim.ttrpc.status import Code, status_for_exception

log = logging.getLogger("pyshim.ttrpc.server")

_UCRED = struct.Struct("3i")

# Payload bytes held by the handlers in flight on one connection before we stop reading from it.
# A byte bound, not a count: long-lived tiny calls (one Wait per exec) must never starve the
# Kill that would end them, while a flood of 4 MiB requests must not grow memory without end.
MAX_IN_FLIGHT_BYTES = 32 << 20


def peer_credentials(sock: Any) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(data)
    return pid, uid, gid


def listen_unix(path: str, *, mode: int = 0o600, backlog: int = 128) -> socket.socket:
    """A listening unix socket at path (replacing a stale socket file), chmod'ed to mode."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """Serves registered services on any number of listening unix sockets."""

    def __init__(self, services: Iterable[Service] = (), *, require_same_user: bool = True) -> None:
        self._services: dict[str, Service] = {}
        for service in services:
            self.register(service)
        self.require_same_user = require_same_user
        self._listeners: list[asyncio.AbstractServer] = []
        self._connections: set[_ServerProtocol] = set()

    def register(self, service: Service) -> None:
        if service.name in self._services:
            raise ValueError(f"service {service.name} is already registered")
        self._services[service.name] = service

    @property
    def services(self) -> dict[str, Service]:
        return self._services

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already-listening socket (a forked shim inherits one from `start`)."""
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        listener = await loop.create_unix_server(lambda: _ServerProtocol(self), sock=sock)
        self._listeners.append(listener)

    async def serve_forever(self, sock: socket.socket) -> None:
        await self.start(sock)
        await self._listeners[-1].serve_forever()

    async def close(self) -> None:
        """Stop accepting, drop every connection and cancel the handlers still running."""
        for listener in self._listeners:
            listener.close()
        for connection in list(self._connections):
            connection.abort()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    def _connection_opened(self, connection: _ServerProtocol) -> None:
        self._connections.add(connection)

    def _connection_closed(self, connection: _ServerProtocol) -> None:
        self._connections.discard(connection)


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        self._state = ServerConnection()
        self._transport: asyncio.Transport | None = None
        self._handlers: dict[asyncio.Task[None], int] = {}  # task → payload bytes it holds
        self._in_flight_bytes = 0
        self._peer_pid: int | None = None
        self._reading_paused_for = {"in_flight": False, "writes": False}

    # --- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self._transport = cast(asyncio.Transport, transport)
        self._server._connection_opened(self)
        sock = self._transport.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError as error:
            log.warning("closing connection: cannot read peer credentials: %s", error)
            self._transport.abort()
            return
        self._peer_pid = pid
        if self._server.require_same_user and (uid, gid) != (os.geteuid(), os.getegid()):
            log.warning(
                "closing connection: peer uid/gid differ from ours",
                extra={"fields": {"peer_pid": pid, "peer_uid": uid, "peer_gid": gid}},
            )
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        for event in self._state.receive_data(data):
            if isinstance(event, RequestReceived):
                self._dispatch(event)
            elif isinstance(event, RequestRejected):
                log.debug("rejected request on stream %d: %s", event.stream_id, event.message)
                self._write(encode_error(event.stream_id, event.code, event.message))
            elif isinstance(event, FrameIgnored):
                log.debug("ignored frame on stream %d: %s", event.stream_id, event.reason)

    def eof_received(self) -> bool | None:
        try:
            self._state.receive_eof()
        except FrameError as error:
            log.warning("closing connection: %s", error)
        return None  # close our side; handlers in flight are cancelled in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connection_closed(self)
        self._transport = None
        for task in self._handlers:
            task.cancel()

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its questions until it catches up.
        self._pause_reading("writes")

    def resume_writing(self) -> None:
        self._resume_reading("writes")

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- requests

    def _dispatch(self, event: RequestReceived) -> None:
        request = event.request
        # Named for debug dumps (`pyshim debug`): which call each pending handler serves.
        task = asyncio.get_running_loop().create_task(
            self._handle(event.stream_id, request),
            name=f"ttrpc {request.service}/{request.method} stream {event.stream_id}")
        size = len(event.request.payload)
        self._handlers[task] = size
        self._in_flight_bytes += size
        task.add_done_callback(self._handler_done)
        if self._in_flight_bytes >= MAX_IN_FLIGHT_BYTES:
            self._pause_reading("in_flight")

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight_bytes -= self._handlers.pop(task, 0)
        if self._in_flight_bytes <= MAX_IN_FLIGHT_BYTES // 2:
            self._resume_reading("in_flight")

    async def _handle(self, stream_id: int, request: ttrpc_pb2.Request) -> None:
        try:
            frame = await self._answer(stream_id, request)
        except asyncio.CancelledError:
            return  # the connection is gone; nobody is left to answer
        except Exception as error:  # a reply that would not serialize: a bug, but not fatal
            log.exception("%s/%s: cannot send the reply", request.service, request.method)
            frame = encode_error(stream_id, Code.UNKNOWN, f"ttrpc: cannot marshal reply: {error}")
        self._write(frame)

    async def _answer(self, stream_id: int, request: ttrpc_pb2.Request) -> bytes:
        service = self._server.services.get(request.service)
        if service is None:
            return encode_error(stream_id, Code.UNIMPLEMENTED, f"service {request.service}")
        method = service.methods.get(request.method)
        if method is None:
            return encode_error(stream_id, Code.UNIMPLEMENTED, f"method {request.method}")
        try:
            message = method.request_type.FromString(request.payload)
        except DecodeError as error:
            return encode_error(
                stream_id, Code.INTERNAL, f"ttrpc: error unmarshalling payload: {error}"
            )
        timeout = request.timeout_nano / 1e9 if request.timeout_nano else None
        if timeout is not None and timeout <= 0:
            return encode_error(stream_id, Code.DEADLINE_EXCEEDED, "context deadline exceeded")
        metadata: dict[str, tuple[str, ...]] = {}
        for pair in request.metadata:
            metadata[pair.key] = (*metadata.get(pair.key, ()), pair.value)
        deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
        context = CallContext(request.service, request.method, metadata, deadline, self._peer_pid)
        try:
            async with asyncio.timeout_at(deadline):
                reply = await method.handler(message, context)
        except Exception as error:  # an expired deadline is a TimeoutError: DEADLINE_EXCEEDED
            code, text = status_for_exception(error)
            if code == Code.UNKNOWN:
                log.exception("%s/%s failed", request.service, request.method)
            return encode_error(stream_id, code, text)
        if reply is None:
            return encode_error(stream_id, Code.UNKNOWN, "ttrpc: marshal called with nil")
        return encode_success(stream_id, reply.SerializeToString())

    # --- flow control

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _pause_reading(self, reason: str) -> None:
        if not any(self._reading_paused_for.values()) and self._transport is not None:
            self._transport.pause_reading()
        self._reading_paused_for[reason] = True

    def _resume_reading(self, reason: str) -> None:
        if not self._reading_paused_for[reason]:
            return
        self._reading_paused_for[reason] = False
        if not any(self._reading_paused_for.values()) and self._transport is not None:
            self._transport.resume_reading()
