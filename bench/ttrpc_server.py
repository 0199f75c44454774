"""A ttrpc server process for benchmarks and socket-level tests.

Serves `containerd.task.v2.Task` with State (a fixed small reply), Wait (blocks until the same
id is killed), Kill and Connect; every other Task method answers UNIMPLEMENTED. Prints `ready`
on stdout once listening. Usage: python -m bench.ttrpc_server SOCKET [--mode 0600] [--cpu N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

import uvloop
from google.protobuf import empty_pb2

from pyshim.logfmt import configure
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import CallContext, NotFound, Server, listen_unix, service_from_descriptor

TASK_SERVICE = shim_pb2.DESCRIPTOR.services_by_name["Task"]


class FakeTask:
    """Just enough of a task service to exercise the wire: no processes behind it."""

    def __init__(self) -> None:
        self._killed: dict[str, asyncio.Event] = {}

    async def state(self, request: shim_pb2.StateRequest, context: CallContext) -> (
        shim_pb2.StateResponse
    ):
        if request.id == "missing":
            raise NotFound("container not created")
        return shim_pb2.StateResponse(
            id=request.id, bundle="/run/bundle", pid=4242, status=task_pb2.RUNNING
        )

    async def wait(self, request: shim_pb2.WaitRequest, context: CallContext) -> (
        shim_pb2.WaitResponse
    ):
        await self._killed.setdefault(request.id, asyncio.Event()).wait()
        return shim_pb2.WaitResponse(exit_status=137)

    async def kill(self, request: shim_pb2.KillRequest, context: CallContext) -> empty_pb2.Empty:
        self._killed.setdefault(request.id, asyncio.Event()).set()
        return empty_pb2.Empty()

    async def connect(self, request: shim_pb2.ConnectRequest, context: CallContext) -> (
        shim_pb2.ConnectResponse
    ):
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=4242, version="fake")


async def serve(path: str, mode: int) -> None:
    server = Server([service_from_descriptor(TASK_SERVICE, FakeTask())])
    await server.start(listen_unix(path, mode=mode))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket")
    parser.add_argument("--mode", type=lambda text: int(text, 8), default=0o600)
    parser.add_argument("--cpu", type=int, help="pin the server to this CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    configure(sys.stderr, level=logging.DEBUG if os.environ.get("TTRPC_DEBUG") else logging.INFO)
    uvloop.run(serve(args.socket, args.mode))


if __name__ == "__main__":
    main()
