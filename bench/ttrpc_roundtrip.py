"""Round trips per second and latency of a small unary ttrpc call: our client → our server, and
our client → Go's ttrpc server (a real containerd-shim-runc-v2) as the reference.

Our server is bench.ttrpc_server in its own process. The Go server is the shim of a busybox
container in a private containerd (skipped when containerd/runc/busybox are missing). For "one
core" every thread of the server and the client is pinned to CPU 0. The call is Task/State
(a ~10-byte request, a ~30-byte reply), the call containerd makes most.

Usage: python -m bench.ttrpc_roundtrip [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvloop

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client

TASK = "containerd.task.v2.Task"
REPO = Path(__file__).resolve().parents[1]
ServerFactory = Callable[[int], contextlib.AbstractContextManager[str]]


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


def pin_all_threads(pid: int, cpu: int) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), {cpu})


@contextlib.contextmanager
def pyshim_server(cpu: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="pyshim-b-", dir="/tmp") as directory:
        path = str(Path(directory) / "ttrpc.sock")
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.ttrpc_server", path, "--cpu", str(cpu)],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            yield path
        finally:
            server.terminate()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()


@contextlib.contextmanager
def go_shim_server(cpu: int) -> Iterator[str]:
    from tests.e2e.containerd import PrivateContainerd, make_busybox_rootfs

    base = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    with PrivateContainerd(base) as containerd:
        rootfs = make_busybox_rootfs(base / "rootfs")
        containerd.ctr("run", "-d", "--rootfs", str(rootfs), "c1", "/bin/sleep", "1000")
        path = containerd.shim_socket_path("default", "c1")
        shim_pid = uvloop.run(shim_pid_of(str(path)))
        pin_all_threads(shim_pid, cpu)
        yield str(path)


async def shim_pid_of(path: str) -> int:
    async with await Client.connect(path) as client:
        reply = await client.call(TASK, "Connect", shim_pb2.ConnectRequest(id="c1"),
                                  shim_pb2.ConnectResponse)
        return int(reply.shim_pid)


def measure(server: ServerFactory, server_cpu: int, client_cpu: int,
            calls: int) -> dict[str, float]:
    os.sched_setaffinity(0, {client_cpu})
    with server(server_cpu) as path:
        uvloop.run(sequential(path, 2000))  # warm up both sides
        latencies = uvloop.run(sequential(path, calls))
        seconds = uvloop.run(pipelined(path, calls, 64))
    latencies.sort()
    return {
        "sequential_rps": 1e9 * len(latencies) / sum(latencies),
        "p50_us": statistics.median(latencies) / 1000,
        "p99_us": latencies[int(len(latencies) * 0.99)] / 1000,
        "pipelined_rps": calls / seconds,
    }


def go_reference_available() -> bool:
    return (os.geteuid() == 0 and all(shutil.which(tool) for tool in ("containerd", "ctr", "runc"))
            and os.path.exists("/bin/busybox"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; figures are medians, ratios paired per round")
    args = parser.parse_args()
    servers: list[tuple[str, ServerFactory]] = [("pyshim (Python)", pyshim_server)]
    if go_reference_available():
        servers.append(("runc-v2 shim (Go)", go_shim_server))
    else:
        print("(no containerd/runc/busybox here: the Go reference row is left out)")
    placements = [("one core", 0, 0)]
    if (os.cpu_count() or 1) > 1:
        placements.append(("two cores", 0, 1))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for placement, server_cpu, client_cpu in placements:
            for name, factory in servers:
                figures = measure(factory, server_cpu, client_cpu, args.calls)
                runs.setdefault((name, placement), []).append(figures)
    print(f"ttrpc round trip, client: pyshim + uvloop, Task/State, {args.calls} calls per figure,"
          f" median of {args.rounds} interleaved rounds")
    print(f"{'server':<20} {'placement':<10} {'sequential rt/s':>16} {'p50 µs':>8} "
          f"{'p99 µs':>8} {'64 in flight rt/s':>18}")
    for placement, _, _ in placements:
        for name, _ in servers:
            median = {key: statistics.median(run[key] for run in runs[name, placement])
                      for key in runs[name, placement][0]}
            print(f"{name:<20} {placement:<10} {median['sequential_rps']:>16.0f} "
                  f"{median['p50_us']:>8.1f} {median['p99_us']:>8.1f} "
                  f"{median['pipelined_rps']:>18.0f}")
    if len(servers) == 2:
        for placement, _, _ in placements:
            ours, go = runs[servers[0][0], placement], runs[servers[1][0], placement]
            ratios = {
                key: statistics.median(a[key] / b[key] for a, b in zip(ours, go, strict=True))
                for key in ("sequential_rps", "pipelined_rps")
            }
            print(f"paired ratio pyshim/Go throughput, {placement}: sequential "
                  f"{ratios['sequential_rps']:.2f}, 64 in flight {ratios['pipelined_rps']:.2f}")


if __name__ == "__main__":
    main()
