"""Frame codec: header layout, the 4 MiB limit, incremental decoding (spec §2.2, §2.7)."""

from __future__ import annotations

import pytest

from pyshim.ttrpc.frame import (
    HEADER_SIZE,
    MAX_MESSAGE_LENGTH,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    MessageType,
    OversizedFrame,
    TruncatedFrame,
    decode_header,
    encode_frame,
)

EMPTY_SUCCESS_STREAM_5 = bytes.fromhex("00000000 00000005 02 00")


def test_empty_success_frame_matches_spec_vector() -> None:
    assert encode_frame(5, MessageType.RESPONSE, b"") == EMPTY_SUCCESS_STREAM_5


def test_header_is_big_endian_length_stream_type_flags() -> None:
    frame = encode_frame(0x01020304, 0x03, b"abc", flags=0x05)
    assert frame == bytes.fromhex("00000003 01020304 03 05") + b"abc"
    assert decode_header(frame) == (3, 0x01020304, 3, 5)


def test_decode_header_rejects_short_input() -> None:
    with pytest.raises(TruncatedFrame):
        decode_header(b"\x00" * (HEADER_SIZE - 1))


def test_encode_refuses_data_over_the_limit() -> None:
    encode_frame(1, MessageType.REQUEST, b"x" * MAX_MESSAGE_LENGTH)
    with pytest.raises(FrameTooLarge, match="message length 4194305 exceed maximum"):
        encode_frame(1, MessageType.REQUEST, b"x" * (MAX_MESSAGE_LENGTH + 1))


def test_decoder_reassembles_frames_fed_one_byte_at_a_time() -> None:
    wire = encode_frame(1, 1, b"hello") + encode_frame(3, 1, b"") + encode_frame(5, 2, b"w" * 300)
    decoder = FrameDecoder()
    events: list[Frame | OversizedFrame] = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        events.extend(decoder.events())
    assert events == [Frame(1, 1, 0, b"hello"), Frame(3, 1, 0, b""), Frame(5, 2, 0, b"w" * 300)]
    assert decoder.buffered == 0
    decoder.close()


def test_decoder_reports_oversized_frame_and_skips_its_body() -> None:
    limit = 16
    body = b"B" * 40
    wire = encode_frame(7, 1, body, max_length=1 << 20) + encode_frame(9, 1, b"next")
    for chunk in (len(wire), 1, 3, 11):
        decoder = FrameDecoder(max_length=limit)
        events: list[Frame | OversizedFrame] = []
        for start in range(0, len(wire), chunk):
            decoder.feed(wire[start : start + chunk])
            events.extend(decoder.events())
        assert events == [OversizedFrame(7, 1, 0, 40), Frame(9, 1, 0, b"next")], chunk
        decoder.close()


def test_oversized_body_is_never_buffered() -> None:
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex("7fffffff 00000001 01 00"))
    assert decoder.events() == [OversizedFrame(1, 1, 0, 0x7FFFFFFF)]
    for _ in range(64):
        decoder.feed(b"\xff" * 65536)
        assert decoder.events() == []
        assert decoder.buffered == 0


def test_close_inside_a_frame_is_truncation() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(1, 1, b"abcdef")[:-2])
    assert decoder.events() == []
    with pytest.raises(TruncatedFrame, match="inside a frame"):
        decoder.close()
    header_only = FrameDecoder()
    header_only.feed(b"\x00\x00")
    with pytest.raises(TruncatedFrame):
        header_only.close()
