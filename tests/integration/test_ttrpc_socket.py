"""ttrpc server and client over real unix sockets: dispatch, concurrency, deadlines, errors,
peer credentials, and surviving bad peers."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from google.protobuf import empty_pb2

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import (
    CallContext,
    Client,
    Code,
    ConnectionClosed,
    DeadlineExceeded,
    Internal,
    NotFound,
    Server,
    Unimplemented,
    Unknown,
    listen_unix,
    service_from_descriptor,
)
from pyshim.ttrpc.frame import Frame, FrameDecoder, MessageType, encode_frame
from pyshim.ttrpc.proto import ttrpc_pb2
from tests.integration.conftest import ServerProcess

TASK = "containerd.task.v2.Task"
T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await scenario()

    return uvloop.run(bounded())


class Handlers:
    """Task methods with behaviour chosen per test."""

    def __init__(self) -> None:
        self.exited = asyncio.Event()
        self.seen_deadline: float | None = None

    async def state(self, request: shim_pb2.StateRequest, context: CallContext) -> Any:
        if request.id == "missing":
            raise NotFound("container not created")
        if request.id == "boom":
            raise RuntimeError("runc did something odd")
        if request.id == "nil":
            return None
        if request.id == "slow":
            self.seen_deadline = context.deadline
            await asyncio.sleep(10)
        return shim_pb2.StateResponse(id=request.id, pid=7)

    async def wait(self, request: shim_pb2.WaitRequest, context: CallContext) -> Any:
        await self.exited.wait()
        return shim_pb2.WaitResponse(exit_status=3)

    async def kill(self, request: shim_pb2.KillRequest, context: CallContext) -> Any:
        self.exited.set()
        return empty_pb2.Empty()


async def start(directory: Path, handlers: Handlers, mode: int = 0o600) -> tuple[Server, str]:
    descriptor = shim_pb2.DESCRIPTOR.services_by_name["Task"]
    server = Server([service_from_descriptor(descriptor, handlers)])
    path = str(directory / "s.sock")
    await server.start(listen_unix(path, mode=mode))
    return server, path


def test_calls_and_status_codes(short_tmp: Path) -> None:
    async def scenario() -> None:
        server, path = await start(short_tmp, Handlers())
        async with await Client.connect(path) as client:
            reply = await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                                      shim_pb2.StateResponse)
            assert (reply.id, reply.pid) == ("c1", 7)
            with pytest.raises(NotFound) as not_found:
                await client.call(TASK, "State", shim_pb2.StateRequest(id="missing"),
                                  shim_pb2.StateResponse)
            assert not_found.value.message == "container not created: not found"
            with pytest.raises(Unknown, match="runc did something odd"):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="boom"),
                                  shim_pb2.StateResponse)
            with pytest.raises(Unknown, match="ttrpc: marshal called with nil"):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="nil"),
                                  shim_pb2.StateResponse)
            with pytest.raises(Unimplemented) as no_method:
                await client.call(TASK, "Checkpoint", shim_pb2.CheckpointTaskRequest(id="c1"),
                                  empty_pb2.Empty)
            assert no_method.value.message == "method Checkpoint"
            with pytest.raises(Unimplemented) as no_service:
                await client.call("containerd.task.v9.Task", "State",
                                  shim_pb2.StateRequest(id="c1"), shim_pb2.StateResponse)
            assert no_service.value.message == "service containerd.task.v9.Task"
        await server.close()

    run(scenario)


def test_pending_wait_does_not_block_other_calls_on_the_connection(short_tmp: Path) -> None:
    async def scenario() -> None:
        server, path = await start(short_tmp, Handlers())
        async with await Client.connect(path) as client:
            wait = asyncio.ensure_future(
                client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
            )
            for _ in range(20):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                                  shim_pb2.StateResponse)
            assert not wait.done()
            await client.call(TASK, "Kill", shim_pb2.KillRequest(id="c1", signal=9),
                              empty_pb2.Empty)
            assert (await wait).exit_status == 3
        await server.close()

    run(scenario)


def test_deadlines_reach_the_handler_and_expire(short_tmp: Path) -> None:
    async def scenario() -> None:
        handlers = Handlers()
        server, path = await start(short_tmp, handlers)
        loop = asyncio.get_running_loop()
        # The server's own deadline: a raw request with a 200 ms timeout_nano, read unbounded.
        reader, writer = await asyncio.open_unix_connection(path)
        before = loop.time()
        slow = shim_pb2.StateRequest(id="slow").SerializeToString()
        writer.write(request_frame(1, "State", slow, timeout_nano=200_000_000))
        header = await reader.readexactly(10)
        response = ttrpc_pb2.Response.FromString(await reader.readexactly(header[3]))
        assert response.status.code == Code.DEADLINE_EXCEEDED
        assert handlers.seen_deadline is not None
        assert 0.1 < handlers.seen_deadline - before < 1.0
        writer.close()
        # The client's deadline: DeadlineExceeded, and the connection stays usable.
        async with await Client.connect(path) as client:
            with pytest.raises(DeadlineExceeded):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="slow"),
                                  shim_pb2.StateResponse, timeout=0.1)
            reply = await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                                      shim_pb2.StateResponse)
            assert reply.id == "c1"
        await server.close()

    run(scenario)


def raw_exchange(path: str, data: bytes, *, expect_frames: int) -> list[tuple[int, Any]]:
    """Send raw bytes on a fresh blocking socket; return (stream id, Response) pairs read."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        decoder = FrameDecoder()
        frames: list[tuple[int, Any]] = []
        while len(frames) < expect_frames:
            chunk = sock.recv(65536)
            if not chunk:
                break
            decoder.feed(chunk)
            for frame in decoder.events():
                assert isinstance(frame, Frame)
                assert frame.type == MessageType.RESPONSE
                frames.append((frame.stream_id, ttrpc_pb2.Response.FromString(frame.data)))
        return frames


def request_frame(stream_id: int, method: str, payload: bytes, timeout_nano: int = 0) -> bytes:
    request = ttrpc_pb2.Request(service=TASK, method=method, payload=payload,
                                timeout_nano=timeout_nano)
    return encode_frame(stream_id, MessageType.REQUEST, request.SerializeToString())


def test_server_process_answers_protocol_errors_on_the_same_stream(
    ttrpc_server: ServerProcess,
) -> None:
    state = shim_pb2.StateRequest(id="c1").SerializeToString()
    oversized = struct.pack(">IIBB", (4 << 20) + 1, 11, 1, 0) + b"\0" * ((4 << 20) + 1)
    data = (
        request_frame(2, "State", state)  # even stream id
        + request_frame(3, "State", b"\x0a\xff")  # payload that is not a StateRequest
        + request_frame(5, "State", state, timeout_nano=-1)  # deadline already passed
        + encode_frame(7, MessageType.DATA, b"ignored")  # v1.1 servers ignore other types
        + encode_frame(9, MessageType.REQUEST, b"\x0a\xff\xff")  # envelope is not a Request
        + oversized
        + request_frame(13, "State", state)
    )
    answers = dict(raw_exchange(ttrpc_server.path, data, expect_frames=6))
    assert sorted(answers) == [2, 3, 5, 9, 11, 13]
    assert (answers[2].status.code, answers[2].status.message) == (
        Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
    assert answers[3].status.code == Code.INTERNAL
    assert answers[3].status.message.startswith("ttrpc: error unmarshalling payload")
    assert answers[5].status.code == Code.DEADLINE_EXCEEDED
    assert answers[9].status.code == Code.INVALID_ARGUMENT
    assert answers[9].status.message.startswith("unmarshal request error")
    assert (answers[11].status.code, answers[11].status.message) == (
        Code.RESOURCE_EXHAUSTED,
        "message length 4194305 exceed maximum message size of 4194304")
    assert not answers[13].HasField("status")
    assert shim_pb2.StateResponse.FromString(answers[13].payload).pid == 4242


def test_truncated_frame_ends_only_that_connection(ttrpc_server: ServerProcess) -> None:
    with socket.socket(socket.AF_UNIX) as bad:
        bad.connect(ttrpc_server.path)
        bad.sendall(request_frame(1, "State", b"")[:-3])
        bad.shutdown(socket.SHUT_WR)
        bad.settimeout(5)
        assert bad.recv(100) == b""

    async def scenario() -> None:
        async with await Client.connect(ttrpc_server.path) as client:
            reply = await client.call(TASK, "State", shim_pb2.StateRequest(id="ok"),
                                      shim_pb2.StateResponse)
            assert reply.id == "ok"

    run(scenario)
    assert ttrpc_server.process.poll() is None
    assert "stream ended inside a frame" in ttrpc_server.log()


def test_client_fails_pending_calls_when_the_server_goes_away(short_tmp: Path) -> None:
    async def scenario() -> None:
        server, path = await start(short_tmp, Handlers())
        client = await Client.connect(path)
        wait = asyncio.ensure_future(
            client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c1"), shim_pb2.WaitResponse)
        )
        await asyncio.sleep(0.05)
        await server.close()
        with pytest.raises(ConnectionClosed, match="ttrpc: closed"):
            await wait
        with pytest.raises(ConnectionClosed):
            await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                              shim_pb2.StateResponse)
        assert client.closed
        await client.close()

    run(scenario)


def test_client_reports_undecodable_replies(short_tmp: Path) -> None:
    path = str(short_tmp / "raw.sock")

    async def answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(10)
        await reader.readexactly(int.from_bytes(header[:4], "big"))
        stream_id = int.from_bytes(header[4:8], "big")
        truncated = ttrpc_pb2.Response(payload=b"\x0a\xff").SerializeToString()
        writer.write(encode_frame(stream_id, MessageType.RESPONSE, truncated))
        await writer.drain()

    async def scenario() -> None:
        raw_server = await asyncio.start_unix_server(answer_garbage, path)
        async with await Client.connect(path) as client:
            with pytest.raises(Internal, match=r"cannot decode .*State reply"):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                                  shim_pb2.StateResponse)
        raw_server.close()

    run(scenario)


PEER_SCRIPT = """
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(5)
sock.connect(sys.argv[1])
try:
    sock.sendall(bytes.fromhex(sys.argv[2]))
    print("answered" if sock.recv(100) else "closed")
except (ConnectionResetError, BrokenPipeError):
    print("closed")
"""


def test_peers_of_another_user_are_refused(short_tmp: Path, caplog: pytest.LogCaptureFixture
                                           ) -> None:
    short_tmp.chmod(0o755)
    frame = request_frame(1, "State", shim_pb2.StateRequest(id="c1").SerializeToString())

    async def peer(user: int | None) -> str:
        # Debian's interpreter: the virtualenv's may sit where another user cannot reach it.
        command = ["/usr/bin/python3", "-c", PEER_SCRIPT, str(short_tmp / "s.sock"), frame.hex()]
        # uvloop's subprocess_exec has no user=/group=: run the blocking call off the loop.
        done = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: subprocess.run(command, capture_output=True, text=True, timeout=20,
                                   user=user, group=user, check=True),
        )
        return done.stdout.strip()

    async def scenario() -> None:
        server, _ = await start(short_tmp, Handlers(), mode=0o666)
        assert await peer(65534) == "closed"
        assert await peer(None) == "answered"
        await server.close()

    with caplog.at_level(logging.WARNING, logger="pyshim.ttrpc.server"):
        run(scenario)
    assert any("peer uid/gid differ" in record.getMessage() for record in caplog.records)


def test_thousands_of_pending_waits_never_starve_the_kill_that_ends_them(
    short_tmp: Path,
) -> None:
    """Back-pressure bounds bytes in flight, not calls: a pod with many execs has many Waits."""

    async def scenario() -> None:
        server, path = await start(short_tmp, Handlers())
        async with await Client.connect(path) as client:
            waits = [
                asyncio.ensure_future(client.call(TASK, "Wait", shim_pb2.WaitRequest(id=f"e{i}"),
                                                  shim_pb2.WaitResponse))
                for i in range(3000)
            ]
            await asyncio.sleep(0.2)
            assert not any(wait.done() for wait in waits)
            await client.call(TASK, "Kill", shim_pb2.KillRequest(id="c1"), empty_pb2.Empty,
                              timeout=10)
            replies = await asyncio.gather(*waits)
            assert {reply.exit_status for reply in replies} == {3}
        await server.close()

    run(scenario)
