"""Property and fuzz tests of the sans-IO layers: any bytes in any chunking, never a crash."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyshim.ttrpc.connection import (
    ClientConnection,
    FrameIgnored,
    RequestReceived,
    RequestRejected,
    ResponseReceived,
    ServerConnection,
    encode_error,
    encode_success,
)
from pyshim.ttrpc.frame import Frame, FrameDecoder, OversizedFrame, TruncatedFrame, encode_frame
from pyshim.ttrpc.status import Code
from tests.conftest import FUZZ_INPUTS

FUZZ = settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)

frames = st.builds(
    Frame,
    stream_id=st.integers(0, 2**32 - 1),
    type=st.integers(0, 255),
    flags=st.integers(0, 255),
    data=st.binary(max_size=300),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@FUZZ
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_frames_survive_any_chunking(sent: list[Frame], cuts: list[int]) -> None:
    FUZZ_INPUTS["codec: frame round trip"] += 1
    wire = b"".join(encode_frame(f.stream_id, f.type, f.data, f.flags) for f in sent)
    decoder = FrameDecoder()
    received: list[Frame | OversizedFrame] = []
    for chunk in chunked(wire, cuts):
        decoder.feed(chunk)
        received.extend(decoder.events())
    assert received == sent
    decoder.close()


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=12),
       st.integers(10, 600))
def test_server_connection_takes_any_bytes(data: bytes, cuts: list[int], limit: int) -> None:
    FUZZ_INPUTS["codec: server connection, random bytes"] += 1
    server = ServerConnection(max_length=limit)
    for chunk in chunked(data, cuts):
        for event in server.receive_data(chunk):
            assert isinstance(event, RequestReceived | RequestRejected | FrameIgnored)
            if isinstance(event, RequestReceived):
                assert event.stream_id % 2 == 1
    with contextlib.suppress(TruncatedFrame):
        server.receive_eof()


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(0, 10_000), max_size=12),
       st.integers(0, 20))
def test_client_connection_takes_any_bytes(data: bytes, cuts: list[int], calls: int) -> None:
    FUZZ_INPUTS["codec: client connection, random bytes"] += 1
    client = ClientConnection()
    sent = {client.send_request("s", "m", b"")[0] for _ in range(calls)}
    answered: set[int] = set()
    for chunk in chunked(data, cuts):
        for event in client.receive_data(chunk):
            if isinstance(event, ResponseReceived):
                assert event.stream_id in sent - answered
                answered.add(event.stream_id)
    assert client.pending == sent - answered
    with contextlib.suppress(TruncatedFrame):
        client.receive_eof()


metadata = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=4)


@FUZZ
@given(
    st.lists(
        st.tuples(st.text(max_size=40), st.text(max_size=20), st.binary(max_size=200),
                  st.integers(-(2**63), 2**63 - 1), metadata),
        min_size=1, max_size=6,
    ),
    st.lists(st.integers(0, 10_000), max_size=12),
    st.lists(st.tuples(st.sampled_from(list(Code)), st.text(max_size=50), st.binary(max_size=50)),
             max_size=6),
)
def test_requests_and_responses_round_trip(
    calls: list[tuple[str, str, bytes, int, list[tuple[str, str]]]],
    cuts: list[int],
    replies: list[tuple[Code, str, bytes]],
) -> None:
    FUZZ_INPUTS["codec: request/response round trip"] += 1
    client, server = ClientConnection(), ServerConnection()
    wire = b""
    for service, method, payload, timeout, pairs in calls:
        wire += client.send_request(service, method, payload, timeout, pairs)[1]
    received = []
    for chunk in chunked(wire, cuts):
        received.extend(server.receive_data(chunk))
    assert len(received) == len(calls)
    for event, (service, method, payload, timeout, pairs) in zip(received, calls, strict=True):
        assert isinstance(event, RequestReceived)
        request = event.request
        assert (request.service, request.method, request.payload) == (service, method, payload)
        assert request.timeout_nano == timeout
        assert [(kv.key, kv.value) for kv in request.metadata] == [
            (k.lower(), v) for k, v in pairs
        ]
    answers = b""
    expected = {}
    for event, (code, message, payload) in zip(received, replies, strict=False):
        answers += (
            encode_success(event.stream_id, payload)
            if code == Code.OK
            else encode_error(event.stream_id, code, message)
        )
        expected[event.stream_id] = (code, message if code else "", b"" if code else payload)
    got = {}
    for chunk in chunked(answers, cuts):
        for answer in client.receive_data(chunk):
            assert isinstance(answer, ResponseReceived)
            got[answer.stream_id] = (answer.code, answer.message, answer.payload)
    assert got == expected
