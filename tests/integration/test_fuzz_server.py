"""Fuzz the real server process over real sockets: malformed headers, oversized lengths, random
protobuf, interleaved stream ids, abrupt closes. After every input the server must still serve a
well-behaved client, and may only ever answer with response frames on stream ids it was sent."""

from __future__ import annotations

import asyncio
import selectors
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from google.protobuf import empty_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client
from pyshim.ttrpc.frame import MAX_MESSAGE_LENGTH, Frame, FrameDecoder, MessageType, encode_frame
from pyshim.ttrpc.proto import ttrpc_pb2
from tests.conftest import FUZZ_INPUTS
from tests.integration.conftest import ServerProcess, start_server_process, stop_server_process

TASK = "containerd.task.v2.Task"
METHODS = ["State", "Wait", "Kill", "Connect", "Create", "Nope", ""]
SERVICES = [TASK, "containerd.task.v3.Task", "x", ""]


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="pyshim-f-", dir="/tmp") as name:
        server = start_server_process(Path(name))
        try:
            yield server
        finally:
            stop_server_process(server)
            log = server.log()
            assert "Traceback" not in log, log


def request_bytes(draw: st.DrawFn) -> bytes:
    request = ttrpc_pb2.Request(
        service=draw(st.sampled_from(SERVICES)),
        method=draw(st.sampled_from(METHODS)),
        payload=draw(st.one_of(
            st.binary(max_size=64),
            st.builds(lambda i: shim_pb2.StateRequest(id=i).SerializeToString(),
                      st.text(max_size=10)),
        )),
        timeout_nano=draw(st.sampled_from([0, -1, 1, 10**6, 2**63 - 1])),
    )
    return request.SerializeToString()


@st.composite
def pieces(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "request", "request", "garbage", "frame", "oversized",
                                 "header"]))
    stream_id = draw(st.integers(0, 40) | st.integers(0, 2**32 - 1))
    if kind == "request":
        return encode_frame(stream_id, MessageType.REQUEST, request_bytes(draw))
    if kind == "frame":
        return encode_frame(stream_id, draw(st.integers(0, 255)), draw(st.binary(max_size=64)),
                            flags=draw(st.integers(0, 255)))
    if kind == "oversized":
        extra = draw(st.integers(1, 64))
        header = struct.pack(">IIBB", MAX_MESSAGE_LENGTH + extra, stream_id, 1, 0)
        return header + b"\0" * draw(st.sampled_from([0, 100, MAX_MESSAGE_LENGTH + extra]))
    if kind == "header":
        return draw(st.binary(min_size=1, max_size=9))
    return draw(st.binary(max_size=200))


def sent_stream_ids(data: bytes) -> set[int]:
    decoder = FrameDecoder()
    decoder.feed(data)
    return {event.stream_id for event in decoder.events()}


def exchange(path: str, data: bytes, abrupt: bool) -> bytes:
    """Send data while reading answers (the server stops reading a peer that does not read its
    answers, so a blocking sendall could deadlock); then half-close and read to EOF."""
    received = bytearray()
    with socket.socket(socket.AF_UNIX) as sock, selectors.DefaultSelector() as selector:
        sock.connect(path)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        view, deadline, sending = memoryview(data), time.monotonic() + 30, True
        while True:
            assert time.monotonic() < deadline, "server stopped answering"
            if sending and not view:
                if abrupt:
                    return b""
                sock.shutdown(socket.SHUT_WR)
                selector.modify(sock, selectors.EVENT_READ)
                sending = False
            for _, mask in selector.select(timeout=1):
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 16)
                    except ConnectionResetError:
                        return bytes(received)
                    if not chunk:
                        return bytes(received)
                    received += chunk
                if mask & selectors.EVENT_WRITE and view:
                    try:
                        view = view[sock.send(view[: 1 << 16]) :]
                    except (BrokenPipeError, ConnectionResetError):
                        return bytes(received)


def healthy(path: str) -> None:
    async def call() -> None:
        async with await Client.connect(path, timeout=5) as client:
            reply = await client.call(TASK, "State", shim_pb2.StateRequest(id="probe"),
                                      shim_pb2.StateResponse, timeout=5)
            assert reply.id == "probe"

    uvloop.run(call())


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(st.lists(pieces(), min_size=1, max_size=6), st.booleans())
def test_server_survives_any_input(fuzz_server: ServerProcess, parts: list[bytes],
                                   abrupt: bool) -> None:
    FUZZ_INPUTS["server: raw connections"] += 1
    data = b"".join(parts)
    answers = exchange(fuzz_server.path, data, abrupt)
    decoder = FrameDecoder()
    decoder.feed(answers)
    sent = sent_stream_ids(data)
    for frame in decoder.events():
        assert isinstance(frame, Frame)
        assert frame.type == MessageType.RESPONSE
        assert frame.stream_id in sent
        ttrpc_pb2.Response.FromString(frame.data)
    assert decoder.buffered == 0
    healthy(fuzz_server.path)
    assert fuzz_server.process.poll() is None


def test_server_serves_others_while_many_connections_misbehave(fuzz_server: ServerProcess) -> None:
    """Interleaved: half-open garbage connections stay open while a client keeps calling."""

    async def scenario() -> None:
        idle = []
        for index in range(20):
            _, writer = await asyncio.open_unix_connection(fuzz_server.path)
            writer.write(struct.pack(">IIBB", 50, 2 * index + 1, 1, 0) + b"partial")
            idle.append(writer)
        async with await Client.connect(fuzz_server.path) as client:
            waits = [
                asyncio.ensure_future(client.call(TASK, "Wait", shim_pb2.WaitRequest(id=f"w{i}"),
                                                  shim_pb2.WaitResponse))
                for i in range(50)
            ]
            states = await asyncio.gather(*[
                client.call(TASK, "State", shim_pb2.StateRequest(id=f"s{i}"),
                            shim_pb2.StateResponse)
                for i in range(200)
            ])
            assert [s.id for s in states] == [f"s{i}" for i in range(200)]
            assert not any(w.done() for w in waits)
            for i in range(50):
                await client.call(TASK, "Kill", shim_pb2.KillRequest(id=f"w{i}"),
                                  empty_pb2.Empty)
            assert [reply.exit_status for reply in await asyncio.gather(*waits)] == [137] * 50
        for writer in idle:
            writer.transport.abort()

    uvloop.run(scenario())
    healthy(fuzz_server.path)
