"""Connection state machines against the spec hex vectors and protocol rules (§2.2 to §2.7)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from pyshim.protos.containerd.events import task_pb2 as events_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2
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
from pyshim.ttrpc.frame import MAX_MESSAGE_LENGTH, MessageType, encode_frame
from pyshim.ttrpc.status import Code

CONNECT_REQUEST_STREAM_1 = (
    bytes.fromhex("00000028 00000001 01 00 0a17")
    + b"containerd.task.v2.Task"
    + bytes.fromhex("1207")
    + b"Connect"
    + bytes.fromhex("1a04 0a02 6331")
)
CONNECT_RESPONSE_STREAM_1 = bytes.fromhex("00000008 00000001 02 00 1206 08d209 10ae2c")
NOT_FOUND_STREAM_3 = (
    bytes.fromhex("00000026 00000003 02 00 0a24 0805 1220") + b"container not created: not found"
)
FORWARD_EXIT_STREAM_1 = (
    bytes.fromhex("000000bb 00000001 01 00 0a2a")
    + b"containerd.services.events.ttrpc.v1.Events"
    + bytes.fromhex("1207")
    + b"Forward"
    + bytes.fromhex("1a57 0a55 0a08 0880e2cfaa06 1005 1207")
    + b"default"
    + bytes.fromhex("1a0b")
    + b"/tasks/exit"
    + bytes.fromhex("2233 0a1a")
    + b"containerd.events.TaskExit"
    + bytes.fromhex("1215 0a02")
    + b"c1"
    + bytes.fromhex("1202")
    + b"c1"
    + bytes.fromhex("18ae2c 2003 2a06 0880e2cfaa06")
    + bytes.fromhex("2080e497d012 2a25 0a1a")
    + b"containerd-namespace-ttrpc"
    + bytes.fromhex("1207")
    + b"default"
)


def test_client_encodes_the_connect_vector() -> None:
    client = ClientConnection()
    payload = shim_pb2.ConnectRequest(id="c1").SerializeToString()
    stream_id, frame = client.send_request("containerd.task.v2.Task", "Connect", payload)
    assert stream_id == 1
    assert frame == CONNECT_REQUEST_STREAM_1


def test_client_stream_ids_are_odd_and_increase_by_two() -> None:
    client = ClientConnection()
    ids = [client.send_request("s", "m", b"")[0] for _ in range(4)]
    assert ids == [1, 3, 5, 7]


def test_client_encodes_the_forward_vector() -> None:
    exit_event = events_pb2.TaskExit(
        container_id="c1",
        id="c1",
        pid=5678,
        exit_status=3,
        exited_at=timestamp_pb2.Timestamp(seconds=1700000000),
    )
    envelope = forward_pb2.Envelope(
        timestamp=timestamp_pb2.Timestamp(seconds=1700000000, nanos=5),
        namespace="default",
        topic="/tasks/exit",
    )
    envelope.event.type_url = "containerd.events.TaskExit"
    envelope.event.value = exit_event.SerializeToString()
    payload = forward_pb2.ForwardRequest(envelope=envelope).SerializeToString()
    client = ClientConnection()
    _, frame = client.send_request(
        "containerd.services.events.ttrpc.v1.Events",
        "Forward",
        payload,
        timeout_nano=5_000_000_000,
        metadata=[("containerd-namespace-ttrpc", "default")],
    )
    assert frame == FORWARD_EXIT_STREAM_1


def test_server_decodes_the_connect_vector() -> None:
    events = ServerConnection().receive_data(CONNECT_REQUEST_STREAM_1)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RequestReceived)
    assert event.stream_id == 1
    assert (event.request.service, event.request.method) == ("containerd.task.v2.Task", "Connect")
    assert shim_pb2.ConnectRequest.FromString(event.request.payload).id == "c1"
    assert event.request.timeout_nano == 0


def test_server_encodes_success_error_and_empty_vectors() -> None:
    reply = shim_pb2.ConnectResponse(shim_pid=1234, task_pid=5678).SerializeToString()
    assert encode_success(1, reply) == CONNECT_RESPONSE_STREAM_1
    assert encode_error(3, Code.NOT_FOUND, "container not created: not found") == (
        NOT_FOUND_STREAM_3
    )
    assert encode_success(5, b"") == bytes.fromhex("00000000 00000005 02 00")


def test_client_matches_responses_to_calls_in_any_order() -> None:
    client = ClientConnection()
    for _ in range(3):
        client.send_request("s", "m", b"")
    events = client.receive_data(NOT_FOUND_STREAM_3 + CONNECT_RESPONSE_STREAM_1)
    assert events == [
        ResponseReceived(3, Code.NOT_FOUND, "container not created: not found", b""),
        ResponseReceived(1, Code.OK, "", bytes.fromhex("08d209 10ae2c")),
    ]
    assert client.pending == {5}


def test_client_ignores_answers_for_calls_it_did_not_make_or_forgot() -> None:
    client = ClientConnection()
    stream_id, _ = client.send_request("s", "m", b"")
    client.forget(stream_id)
    events = client.receive_data(CONNECT_RESPONSE_STREAM_1)
    assert events == [FrameIgnored(1, MessageType.RESPONSE, "no call in flight on this stream")]


def test_server_rejects_even_stream_ids() -> None:
    frame = encode_frame(2, MessageType.REQUEST, b"")
    assert ServerConnection().receive_data(frame) == [
        RequestRejected(
            2, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams"
        )
    ]


def test_server_ignores_non_request_types() -> None:
    events = ServerConnection().receive_data(
        encode_frame(1, MessageType.DATA, b"x") + encode_frame(3, 0x7F, b"")
    )
    assert [type(event) for event in events] == [FrameIgnored, FrameIgnored]


def test_server_answers_oversized_requests_with_resource_exhausted() -> None:
    header = (MAX_MESSAGE_LENGTH + 1).to_bytes(4, "big") + bytes.fromhex("00000009 01 00")
    events = ServerConnection().receive_data(header)
    assert events == [
        RequestRejected(
            9,
            Code.RESOURCE_EXHAUSTED,
            "message length 4194305 exceed maximum message size of 4194304",
        )
    ]


def test_server_rejects_undecodable_envelopes_and_keeps_going() -> None:
    server = ServerConnection()
    garbage = encode_frame(1, MessageType.REQUEST, b"\x0a\xff\xff")  # length runs off the end
    events = server.receive_data(garbage + CONNECT_REQUEST_STREAM_1)
    assert isinstance(events[0], RequestRejected)
    assert events[0].code == Code.INVALID_ARGUMENT
    assert events[0].message.startswith("unmarshal request error")
    assert isinstance(events[1], RequestReceived)


def test_client_refuses_requests_over_the_limit_without_using_a_stream_id() -> None:
    client = ClientConnection()
    try:
        client.send_request("s", "m", b"x" * MAX_MESSAGE_LENGTH)
    except Exception as error:
        assert "exceed maximum message size" in str(error)
    else:
        raise AssertionError("an oversized request was encoded")
    assert client.send_request("s", "m", b"")[0] == 1


def test_oversized_response_frame_becomes_resource_exhausted() -> None:
    frame = encode_success(1, b"x" * MAX_MESSAGE_LENGTH)
    client = ClientConnection()
    client.send_request("s", "m", b"")
    [event] = client.receive_data(frame)
    assert isinstance(event, ResponseReceived)
    assert event.code == Code.RESOURCE_EXHAUSTED
