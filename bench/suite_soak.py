"""``bench.suite``'s exec-soak figure: many exec create/start/wait/delete cycles in one shim,
and how much its RSS grew (a ttrpc race in Go's shim grew 96 MB over 2 M execs, containerd
issue 13561).

Per configuration: one sleeper (``ctr run -d``); the cycles talk ttrpc straight to its shim's
socket, as containerd would (``Exec``, ``Start``, ``Wait``, ``Delete`` of ``/bin/true``),
:data:`CONCURRENCY` at a time. Growth = RSS (``/proc/PID/smaps_rollup`` of the shim daemon,
summed with its helpers) after the cycles minus after a warm-up of :data:`WARM_UP` cycles.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import uvloop
from google.protobuf import any_pb2, empty_pb2

from bench.suite_ctr import Session
from bench.suite_env import BenchError, Config, check_origin, daemons_of, rollup
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client, RPCError
from tests.e2e.conftest import TASK, shim_address

WARM_UP = 50
CONCURRENCY = 4
CALL_TIMEOUT = 60.0
PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
_SPEC = any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=json.dumps({
    "args": ["/bin/true"], "env": ["PATH=/bin:/sbin"], "cwd": "/",
    "user": {"uid": 0, "gid": 0}}).encode())


@dataclass(frozen=True)
class Soak:
    cycles: int
    rss_before_kib: int
    rss_after_kib: int
    seconds: float
    #: RSS (KiB) after each tenth of the cycles: a leak grows steadily, a warm-up levels off
    samples: tuple[int, ...] = ()

    @property
    def growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib


async def _cycle(client: Client, container_id: str, exec_id: str) -> None:
    async def call(method: str, request: object, reply: type) -> object:
        return await client.call(TASK, method, request, reply,  # type: ignore[arg-type]
                                 timeout=CALL_TIMEOUT)

    await call("Exec", shim_pb2.ExecProcessRequest(id=container_id, exec_id=exec_id,
                                                   spec=_SPEC), empty_pb2.Empty)
    await call("Start", shim_pb2.StartRequest(id=container_id, exec_id=exec_id),
               shim_pb2.StartResponse)
    waited = await call("Wait", shim_pb2.WaitRequest(id=container_id, exec_id=exec_id),
                        shim_pb2.WaitResponse)
    if getattr(waited, "exit_status", None) != 0:
        raise BenchError(f"exec soak: {exec_id} in {container_id}: {waited}")
    await call("Delete", shim_pb2.DeleteRequest(id=container_id, exec_id=exec_id),
               shim_pb2.DeleteResponse)


async def _cycles(client: Client, container_id: str, prefix: str, count: int) -> None:
    if count <= 0:
        return
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await _cycle(client, container_id, f"{prefix}{number}")

    async with asyncio.TaskGroup() as group:
        for _ in range(min(CONCURRENCY, count)):
            group.create_task(worker())


def measure(session: Session, config: Config, cycles: int) -> Soak:
    """``cycles`` exec cycles in one shim of ``config`` (after :data:`WARM_UP`); the shim's
    RSS before and after. The container is deleted afterwards."""
    container_id = session.new_id(config, "soak")
    step = f"exec soak: {config.name}"
    try:
        session.start_sleeper(config, container_id, step)
        daemons = daemons_of(session.containerd, [container_id])
        check_origin(session.containerd, config, daemons)
        pid = daemons[0].pid
        address = shim_address(session.containerd, container_id)

        async def scenario() -> Soak:
            async with await Client.connect(address, timeout=10) as client:
                await _cycles(client, container_id, "w", WARM_UP)
                before = rollup(pid)[1]
                began = time.perf_counter()
                samples = []
                done = 0
                for tenth in range(1, 11):
                    chunk = cycles * tenth // 10 - done
                    await _cycles(client, container_id, f"s{tenth}-", chunk)
                    done += chunk
                    samples.append(rollup(pid)[1])
                seconds = time.perf_counter() - began
                return Soak(cycles, before, samples[-1], seconds, tuple(samples))

        try:
            return uvloop.run(scenario())
        except* RPCError as group:
            raise BenchError(f"{step}: {group.exceptions[0]}") from None
    finally:
        session.remove([container_id], step)
