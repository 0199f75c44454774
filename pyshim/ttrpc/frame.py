"""ttrpc frames, sans-IO: bytes in → frames out, frames in → bytes out (spec §2.2).

Owns the 10-byte big-endian header and the 4 MiB limit. Never touches a socket and never
parses protobuf: the envelope is the connection layer's business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size
MAX_MESSAGE_LENGTH = 4 << 20
MAX_STREAM_ID = (1 << 32) - 1


class MessageType(IntEnum):
    REQUEST = 0x01
    RESPONSE = 0x02
    DATA = 0x03  # ttrpc 1.2 streaming; never used by containerd on shim or events APIs


class FrameError(Exception):
    """Input that is not a valid ttrpc frame."""


class TruncatedFrame(FrameError):
    """The byte stream ended inside a header or a frame body."""


class FrameTooLarge(FrameError):
    """A frame whose data length exceeds the limit."""

    def __init__(self, length: int, limit: int = MAX_MESSAGE_LENGTH) -> None:
        super().__init__(f"message length {length} exceed maximum message size of {limit}")
        self.length = length
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame over the limit: its body is discarded, but the stream id deserves an answer."""

    stream_id: int
    type: int
    flags: int
    length: int


def encode_frame(
    stream_id: int,
    message_type: int,
    data: bytes,
    flags: int = 0,
    max_length: int = MAX_MESSAGE_LENGTH,
) -> bytes:
    if len(data) > max_length:
        raise FrameTooLarge(len(data), max_length)
    return HEADER.pack(len(data), stream_id, message_type, flags) + data


def decode_header(header: bytes) -> tuple[int, int, int, int]:
    """(length, stream_id, type, flags) from the first 10 bytes."""
    if len(header) < HEADER_SIZE:
        raise TruncatedFrame(f"frame header needs {HEADER_SIZE} bytes, got {len(header)}")
    length, stream_id, message_type, flags = HEADER.unpack_from(header)
    return length, stream_id, message_type, flags


class FrameDecoder:
    """Incremental decoder: feed() whatever the socket gave, then drain next_event().

    Oversized frames do not end the stream: the decoder reports them at once and then skips
    their body as it arrives, without buffering it (a peer cannot make us hold 4 GiB).
    """

    # Compact the buffer once this much of its head has been consumed.
    _COMPACT_AT = 64 * 1024

    def __init__(self, max_length: int = MAX_MESSAGE_LENGTH) -> None:
        self.max_length = max_length
        self._buffer = bytearray()
        self._offset = 0
        self._discard = 0

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        # Skip an oversized body straight from the input, but only once nothing older is buffered.
        if self._discard and not self.buffered:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            data = data[skipped:]
        self._buffer += data

    def next_event(self) -> Frame | OversizedFrame | None:
        buffer, offset = self._buffer, self._offset
        if self._discard:
            skipped = min(self._discard, len(buffer) - offset)
            self._discard -= skipped
            offset += skipped
            self._consume_to(offset)
            if self._discard:
                return None
            buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < HEADER_SIZE:
            return None
        length, stream_id, message_type, flags = HEADER.unpack_from(buffer, offset)
        if length > self.max_length:
            self._discard = length
            self._consume_to(offset + HEADER_SIZE)
            return OversizedFrame(stream_id, message_type, flags, length)
        end = offset + HEADER_SIZE + length
        if len(buffer) < end:
            return None
        frame = Frame(stream_id, message_type, flags, bytes(buffer[offset + HEADER_SIZE : end]))
        self._consume_to(end)
        return frame

    def events(self) -> list[Frame | OversizedFrame]:
        """Every complete event the buffered bytes hold."""
        events: list[Frame | OversizedFrame] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        """The peer has no more to send: anything left over is a truncated frame."""
        if self._discard:
            raise TruncatedFrame(f"stream ended {self._discard} bytes into an oversized frame")
        if self.buffered:
            raise TruncatedFrame(f"stream ended inside a frame ({self.buffered} bytes pending)")

    def _consume_to(self, offset: int) -> None:
        if offset >= len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif offset >= self._COMPACT_AT:
            del self._buffer[:offset]
            self._offset = 0
        else:
            self._offset = offset
