"""ttrpc connections as pure state machines (h11 style): bytes in → events out, calls → bytes.

ServerConnection and ClientConnection own the envelope (ttrpc.Request / ttrpc.Response), stream
id rules and the answers the protocol itself gives (spec §2.2 to §2.4). No sockets, no asyncio.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError

from pyshim.ttrpc.frame import (
    MAX_MESSAGE_LENGTH,
    MAX_STREAM_ID,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    OversizedFrame,
    encode_frame,
)
from pyshim.ttrpc.proto import status_pb2, ttrpc_pb2
from pyshim.ttrpc.status import Code

Metadata = Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A well-formed request: the server should run the method and answer on stream_id."""

    stream_id: int
    request: ttrpc_pb2.Request


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request the protocol itself refuses: answer it with this status, run nothing."""

    stream_id: int
    code: Code
    message: str


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    stream_id: int
    code: int
    message: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class FrameIgnored:
    """A frame the protocol says to drop silently (worth a debug log line, nothing else)."""

    stream_id: int
    type: int
    reason: str


ServerEvent = RequestReceived | RequestRejected | FrameIgnored
ClientEvent = ResponseReceived | FrameIgnored
EventT = TypeVar("EventT", ServerEvent, ClientEvent)


class StreamIdsExhausted(Exception):
    """The client used every odd 32-bit stream id; open a new connection."""


def encode_response(stream_id: int, response: ttrpc_pb2.Response) -> bytes:
    """A response frame; one too large for the limit becomes RESOURCE_EXHAUSTED instead."""
    data = response.SerializeToString()
    try:
        return encode_frame(stream_id, MessageType.RESPONSE, data)
    except FrameTooLarge as error:
        return encode_error(stream_id, Code.RESOURCE_EXHAUSTED, str(error))


def encode_error(stream_id: int, code: Code, message: str) -> bytes:
    response = ttrpc_pb2.Response(status=status_pb2.Status(code=code, message=message))
    return encode_frame(stream_id, MessageType.RESPONSE, response.SerializeToString())


def encode_success(stream_id: int, payload: bytes) -> bytes:
    # The success Response carries no status field; an Empty reply makes a zero-length frame.
    return encode_response(stream_id, ttrpc_pb2.Response(payload=payload))


class _FramedConnection(Generic[EventT]):
    """Either side: frames from the byte stream, each turned into one event by the subclass."""

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self._decoder = FrameDecoder(max_length)

    def receive_data(self, data: bytes) -> list[EventT]:
        self._decoder.feed(data)
        return [self._interpret(event) for event in self._decoder.events()]

    def receive_eof(self) -> None:
        """Raises TruncatedFrame when the peer hung up inside a frame."""
        self._decoder.close()

    def _interpret(self, event: Frame | OversizedFrame) -> EventT:
        raise NotImplementedError

    def _too_large(self, event: OversizedFrame) -> str:
        return str(FrameTooLarge(event.length, self._decoder.max_length))


class ServerConnection(_FramedConnection[ServerEvent]):
    """The server side of one connection."""

    def _interpret(self, event: Frame | OversizedFrame) -> ServerEvent:
        if isinstance(event, OversizedFrame):
            return RequestRejected(event.stream_id, Code.RESOURCE_EXHAUSTED, self._too_large(event))
        if event.stream_id % 2 != 1:
            return RequestRejected(
                event.stream_id,
                Code.INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams",
            )
        if event.type != MessageType.REQUEST:
            return FrameIgnored(event.stream_id, event.type, f"message type {event.type:#04x}")
        request = ttrpc_pb2.Request()
        try:
            request.ParseFromString(event.data)
        except DecodeError as error:
            return RequestRejected(
                event.stream_id, Code.INVALID_ARGUMENT, f"unmarshal request error: {error}"
            )
        return RequestReceived(event.stream_id, request)


class ClientConnection(_FramedConnection[ClientEvent]):
    """The client side of one connection: odd stream ids from 1, responses matched to calls."""

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__(max_length)
        self._next_stream_id = 1
        self.pending: set[int] = set()

    def send_request(
        self,
        service: str,
        method: str,
        payload: bytes,
        timeout_nano: int = 0,
        metadata: Metadata = (),
    ) -> tuple[int, bytes]:
        """(stream id, frame bytes) for a new call. Raises FrameTooLarge before using an id."""
        request = ttrpc_pb2.Request(
            service=service,
            method=method,
            payload=payload,
            timeout_nano=timeout_nano,
            metadata=[ttrpc_pb2.KeyValue(key=k.lower(), value=v) for k, v in metadata],
        )
        data = request.SerializeToString()
        if len(data) > self._decoder.max_length:
            raise FrameTooLarge(len(data), self._decoder.max_length)
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise StreamIdsExhausted("ttrpc: stream ids exhausted on this connection")
        self._next_stream_id += 2
        self.pending.add(stream_id)
        return stream_id, encode_frame(stream_id, MessageType.REQUEST, data)

    def forget(self, stream_id: int) -> None:
        """The caller gave up on this call (timeout, cancellation): a late answer is ignored."""
        self.pending.discard(stream_id)

    def _interpret(self, event: Frame | OversizedFrame) -> ClientEvent:
        if event.stream_id not in self.pending:
            return FrameIgnored(event.stream_id, event.type, "no call in flight on this stream")
        if isinstance(event, OversizedFrame):
            self.pending.discard(event.stream_id)
            return ResponseReceived(
                event.stream_id, Code.RESOURCE_EXHAUSTED, self._too_large(event), b""
            )
        if event.type != MessageType.RESPONSE:
            return FrameIgnored(event.stream_id, event.type, f"message type {event.type:#04x}")
        self.pending.discard(event.stream_id)
        response = ttrpc_pb2.Response()
        try:
            response.ParseFromString(event.data)
        except DecodeError as error:
            return ResponseReceived(
                event.stream_id, Code.INTERNAL, f"ttrpc: invalid response: {error}", b""
            )
        if response.HasField("status") and response.status.code != Code.OK:
            return ResponseReceived(
                event.stream_id, response.status.code, response.status.message, b""
            )
        return ResponseReceived(event.stream_id, Code.OK, "", response.payload)
