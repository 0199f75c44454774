"""Our ttrpc client against Go's ttrpc server: the Task API of a real containerd-shim-runc-v2
(containerd 1.6) serving a busybox container. Checks the wire, the status codes and messages the
spec records for runc-v2 (§2.4, §2.6), and concurrency on one connection."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
import uvloop

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import Client, Code, NotFound, Unimplemented
from pyshim.ttrpc.frame import Frame, FrameDecoder, MessageType, OversizedFrame, encode_frame
from pyshim.ttrpc.proto import ttrpc_pb2
from tests.e2e.conftest import require_e2e
from tests.e2e.containerd import PrivateContainerd, make_busybox_rootfs

TASK = "containerd.task.v2.Task"
BUSYBOX = "/bin/busybox"


@pytest.fixture
def go_shim(containerd: PrivateContainerd) -> tuple[Path, int]:
    """(socket path, task pid) of a runc-v2 shim serving container c1 (busybox sleep)."""
    require_e2e(("containerd", "ctr", "runc"), (BUSYBOX,))
    rootfs = make_busybox_rootfs(containerd.base_dir / "rootfs")
    containerd.ctr("run", "-d", "--rootfs", str(rootfs), "c1", "/bin/sleep", "1000")
    tasks = containerd.ctr("tasks", "ls").stdout.split()
    task_pid = int(tasks[tasks.index("c1") + 1])
    return containerd.shim_socket_path("default", "c1"), task_pid


def test_task_calls_against_runc_v2(go_shim: tuple[Path, int]) -> None:
    path, task_pid = go_shim

    async def scenario() -> None:
        async with await Client.connect(f"unix://{path}", timeout=5) as client:
            connected = await client.call(TASK, "Connect", shim_pb2.ConnectRequest(id="c1"),
                                          shim_pb2.ConnectResponse, timeout=5)
            assert connected.task_pid == task_pid
            assert connected.shim_pid > 0
            state = await client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                                      shim_pb2.StateResponse, timeout=5)
            assert (state.id, state.pid, state.status) == ("c1", task_pid, task_pb2.RUNNING)
            # "Not exited" is Go's zero time, not the epoch (spec §3.2).
            assert state.exited_at.seconds == -62135596800
            pids = await client.call(TASK, "Pids", shim_pb2.PidsRequest(id="c1"),
                                     shim_pb2.PidsResponse, timeout=5)
            assert task_pid in [process.pid for process in pids.processes]
            states = await asyncio.gather(*(
                client.call(TASK, "State", shim_pb2.StateRequest(id="c1"),
                            shim_pb2.StateResponse, timeout=5)
                for _ in range(50)
            ))
            assert {s.pid for s in states} == {task_pid}

    uvloop.run(scenario())


def test_runc_v2_errors_map_to_our_typed_errors(go_shim: tuple[Path, int]) -> None:
    path, _ = go_shim

    async def scenario() -> None:
        async with await Client.connect(str(path), timeout=5) as client:
            with pytest.raises(NotFound) as no_exec:
                await client.call(TASK, "State", shim_pb2.StateRequest(id="c1", exec_id="nope"),
                                  shim_pb2.StateResponse, timeout=5)
            assert no_exec.value.message == "process does not exist nope: not found"
            with pytest.raises(NotFound) as no_container:
                await client.call(TASK, "State", shim_pb2.StateRequest(id="other"),
                                  shim_pb2.StateResponse, timeout=5)
            assert no_container.value.message == "container not created: not found"
            with pytest.raises(Unimplemented) as no_method:
                await client.call(TASK, "Frobnicate", shim_pb2.StateRequest(id="c1"),
                                  shim_pb2.StateResponse, timeout=5)
            assert "Frobnicate" in no_method.value.message
            with pytest.raises(Unimplemented) as no_service:
                await client.call("containerd.task.v9.Task", "State",
                                  shim_pb2.StateRequest(id="c1"), shim_pb2.StateResponse,
                                  timeout=5)
            assert "containerd.task.v9.Task" in no_service.value.message

    uvloop.run(scenario())


def test_go_server_rejects_even_stream_ids_like_ours(go_shim: tuple[Path, int]) -> None:
    """The rule our server copies (spec §2.2), checked on the Go implementation."""
    path, _ = go_shim
    request = ttrpc_pb2.Request(service=TASK, method="State",
                                payload=shim_pb2.StateRequest(id="c1").SerializeToString())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(encode_frame(2, MessageType.REQUEST, request.SerializeToString()))
        decoder = FrameDecoder()
        frames: list[Frame | OversizedFrame] = []
        while not frames:
            chunk = sock.recv(4096)
            assert chunk, "runc-v2 closed the connection without answering"
            decoder.feed(chunk)
            frames = decoder.events()
    [frame] = frames
    assert (frame.stream_id, frame.type) == (2, MessageType.RESPONSE)
    assert isinstance(frame, Frame)
    response = ttrpc_pb2.Response.FromString(frame.data)
    assert response.status.code == Code.INVALID_ARGUMENT
    assert response.status.message == "StreamID must be odd for client initiated streams"
