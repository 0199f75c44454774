"""Round trips per second and latency of a small unary ttrpc call, our client → our server.

The server is bench.ttrpc_server in its own process; by default both processes are pinned to
CPU 0, so the figure is what one core does. The call is Task/State (a 10-byte request, a ~30-byte
reply), the call containerd makes most. Usage: python -m bench.ttrpc_roundtrip [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client

TASK = "containerd.task.v2.Task"


async def sequential(path: str, calls: int) -> list[int]:
    """Latency of each call, one at a time (ns)."""
    request = shim_pb2.StateRequest(id="c1")
    latencies = []
    async with await Client.connect(path) as client:
        for _ in range(calls):
            start = time.perf_counter_ns()
            await client.call(TASK, "State", request, shim_pb2.StateResponse)
            latencies.append(time.perf_counter_ns() - start)
    return latencies


async def pipelined(path: str, calls: int, in_flight: int) -> float:
    """Seconds for `calls` calls with `in_flight` outstanding at any time."""
    request = shim_pb2.StateRequest(id="c1")
    async with await Client.connect(path) as client:
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.call(TASK, "State", request, shim_pb2.StateResponse)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - start


def measure(server_cpu: int, client_cpu: int, calls: int) -> dict[str, float]:
    os.sched_setaffinity(0, {client_cpu})
    with tempfile.TemporaryDirectory(prefix="pyshim-b-", dir="/tmp") as directory:
        path = str(Path(directory) / "ttrpc.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.ttrpc_server", path, "--cpu", str(server_cpu)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            uvloop.run(sequential(path, 2000))  # warm up both sides
            latencies = uvloop.run(sequential(path, calls))
            seconds = uvloop.run(pipelined(path, calls, 64))
        finally:
            server.terminate()
            server.wait(timeout=10)
    latencies.sort()
    return {
        "sequential_rps": 1e9 * len(latencies) / sum(latencies),
        "p50_us": statistics.median(latencies) / 1000,
        "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
        "pipelined_rps": calls / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    print(f"ttrpc round trip, Task/State, {args.calls} calls per figure, uvloop")
    print(f"{'placement':<26} {'sequential rt/s':>16} {'p50 µs':>8} {'p99 µs':>8} "
          f"{'64 in flight rt/s':>18}")
    placements = [("one core (server+client)", 0, 0)]
    if (os.cpu_count() or 1) > 1:
        placements.append(("two cores", 0, 1))
    for name, server_cpu, client_cpu in placements:
        figures = measure(server_cpu, client_cpu, args.calls)
        print(f"{name:<26} {figures['sequential_rps']:>16.0f} {figures['p50_us']:>8.1f} "
              f"{figures['p99_us']:>8.1f} {figures['pipelined_rps']:>18.0f}")


if __name__ == "__main__":
    main()
