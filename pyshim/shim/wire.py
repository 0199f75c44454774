"""Just enough protobuf wire format for `start` and `delete`, without importing protobuf.

Those two commands run once per container and their start-up time is measured; the messages
they touch (Any, BootstrapParams, runc Options' shim_cgroup, BootstrapResult, DeleteResponse)
are small and fixed. tests/unit/test_shim_wire.py checks every function against protobuf.
"""

from __future__ import annotations

# Not collections.abc at run time (2 ms of every start); mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a protobuf message."""


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field; raises WireError on malformed input.

    Groups (wire types 3/4) are refused, as protobuf's parser refuses an unterminated one.
    """
    offset = 0
    while offset < len(data):
        key, offset = _varint(data, offset)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value: int | bytes
        if wire_type == VARINT:
            value, offset = _varint(data, offset)
        elif wire_type == LENGTH:
            length, offset = _varint(data, offset)
            if offset + length > len(data):
                raise WireError("truncated length-delimited field")
            value, offset = data[offset : offset + length], offset + length
        elif wire_type == FIXED64:
            if offset + 8 > len(data):
                raise WireError("truncated fixed64")
            value, offset = int.from_bytes(data[offset : offset + 8], "little"), offset + 8
        elif wire_type == FIXED32:
            if offset + 4 > len(data):
                raise WireError("truncated fixed32")
            value, offset = int.from_bytes(data[offset : offset + 4], "little"), offset + 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
        yield number, wire_type, value


def strings(data: bytes) -> dict[int, str]:
    """Length-delimited fields that are valid UTF-8, by number (last one wins)."""
    found: dict[int, str] = {}
    for number, wire_type, value in fields(data):
        if wire_type == LENGTH and isinstance(value, bytes):
            try:
                found[number] = value.decode()
            except UnicodeDecodeError:
                continue
    return found


def decode_any(data: bytes) -> tuple[str, bytes]:
    """google.protobuf.Any → (type_url, value)."""
    type_url, value = "", b""
    for number, wire_type, field_value in fields(data):
        if wire_type != LENGTH or not isinstance(field_value, bytes):
            continue
        if number == 1:
            type_url = field_value.decode(errors="replace")
        elif number == 2:
            value = field_value
    return type_url, value


def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_field(number: int, value: int | bytes | str) -> bytes:
    """A varint field (ints) or a length-delimited one (bytes/str); zero values are omitted,
    as proto3 writes them."""
    if isinstance(value, int):
        return encode_varint(number << 3 | VARINT) + encode_varint(value) if value else b""
    raw = value.encode() if isinstance(value, str) else value
    if not raw:
        return b""
    return encode_varint(number << 3 | LENGTH) + encode_varint(len(raw)) + raw


def encode_timestamp(seconds: int, nanos: int) -> bytes:
    return encode_field(1, seconds) + encode_field(2, nanos)


def encode_delete_response(pid: int, exit_status: int, seconds: int, nanos: int) -> bytes:
    """containerd.task.v2.DeleteResponse{pid=1, exit_status=2, exited_at=3}."""
    timestamp = encode_timestamp(seconds, nanos)
    exited_at = encode_varint(3 << 3 | LENGTH) + encode_varint(len(timestamp)) + timestamp
    return encode_field(1, pid) + encode_field(2, exit_status) + exited_at


def encode_bootstrap_result(version: int, address: str, protocol: str = "ttrpc") -> bytes:
    """containerd.runtime.bootstrap.v1.BootstrapResult{version=1, address=2, protocol=3}."""
    return encode_field(1, version) + encode_field(2, address) + encode_field(3, protocol)
