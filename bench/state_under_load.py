"""State latency while the shim relays a flood of output (issue 11): pyshim
(io.containerd.pyshim.v1) against the Go reference (io.containerd.runc.v2), on one private
containerd 1.6.

Per round and runtime (rounds interleave the runtimes, order alternating): a container started
with ``ctr run -d --log-uri file://<base>/out-<n>.log … sh -c 'dd if=/dev/zero bs=1M
count=1024 2>/dev/null'`` writes 1 GiB that its shim appends to the file, while this process
calls the shim's ``State`` over its ttrpc socket (as containerd would) every 10 ms, on one
connection, until State says STOPPED. Per round:

* State latency: median, p99 and worst of every call during the flood (ms);
* throughput: the log file's size (checked: 1 GiB) divided by the time from ``ctr run -d``
  returning to the first State that says STOPPED (both shims report the exit after the last
  byte is in the file), MB/s (MB = 10^6 bytes);
* calls: how many State calls the round made.

The table shows, per runtime, the median over the rounds of each figure and the worst call of
all rounds. Measures only, checks nothing but that each log file got the whole GiB (a round
that lost output is reported and dropped). Needs root, containerd, ctr, runc and
/bin/busybox; everything it starts is stopped and removed at the end, also on Ctrl-C.

Usage: python -m bench.state_under_load [--rounds N] [--size-mib M] [--interval-ms I]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.common import (
    PYSHIM,
    RUNC_V2,
    SHORT,
    missing_requirements,
    private_containerd,
    wait_for_no_shims,
)
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import Client
from tests.e2e.conftest import TASK, shim_address
from tests.e2e.containerd import PrivateContainerd

RUNTIMES = [PYSHIM, RUNC_V2]
MIB = 1 << 20
DEFAULT_ROUNDS = 5
DEFAULT_SIZE_MIB = 1024
DEFAULT_INTERVAL_MS = 10.0
#: Deadline of one State call: far above any latency worth reporting, so a stuck shim ends
#: the round with an error instead of hanging the benchmark.
STATE_TIMEOUT = 60.0


@dataclass
class Round:
    latencies_ms: list[float]
    seconds: float
    size: int

    @property
    def throughput_mb_s(self) -> float:
        return self.size / self.seconds / 1e6

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def poll_state(address: str, container_id: str, interval: float) -> tuple[list[float],
                                                                                 float]:
    """State every ``interval`` s until STOPPED: (latencies in ms, monotonic time of the
    first STOPPED)."""
    latencies: list[float] = []
    request = shim_pb2.StateRequest(id=container_id)
    async with await Client.connect(address, timeout=10) as client:
        next_call = time.monotonic()
        while True:
            started = time.perf_counter()
            reply = await client.call(TASK, "State", request, shim_pb2.StateResponse,
                                      timeout=STATE_TIMEOUT)
            latencies.append((time.perf_counter() - started) * 1000)
            if reply.status == task_pb2.STOPPED:
                return latencies, time.monotonic()
            next_call += interval
            await asyncio.sleep(max(0.0, next_call - time.monotonic()))


def one_round(containerd: PrivateContainerd, runtime: str, rootfs: Path, index: int,
              size_mib: int, interval: float) -> Round:
    cid = f"state-load-{SHORT[runtime]}-{os.getpid()}-{index}"
    log = containerd.base_dir / f"out-{cid}.log"
    command = f"dd if=/dev/zero bs=1048576 count={size_mib} 2>/dev/null"
    try:
        # --rootfs is a switch: the rootfs is the first positional argument, after all flags.
        containerd.ctr("run", "-d", "--runtime", runtime, "--log-uri", f"file://{log}",
                       "--rootfs", str(rootfs), cid, "/bin/sh", "-c", command)
        started = time.monotonic()
        address = shim_address(containerd, cid)
        latencies, stopped = uvloop.run(poll_state(address, cid, interval))
        return Round(latencies, stopped - started, log.stat().st_size)
    finally:
        containerd.ctr("task", "rm", "--force", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
        log.unlink(missing_ok=True)
        wait_for_no_shims(containerd)


def table(runs: dict[str, list[Round]], size_mib: int, interval_ms: float) -> str:
    header = ["figure", *(f"{SHORT[runtime]} (median of rounds)" for runtime in runs)]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, values: dict[str, str]) -> None:
        rows.append((label, [values[runtime] for runtime in runs]))

    def median(figure: str) -> dict[str, float]:
        return {runtime: statistics.median(_figure(r, figure) for r in rounds)
                for runtime, rounds in runs.items() if rounds}

    def fmt(values: dict[str, float], unit: str, digits: int = 1) -> dict[str, str]:
        return {runtime: f"{values[runtime]:.{digits}f} {unit}" if runtime in values else "-"
                for runtime in runs}

    row("State latency, median", fmt(median("p50"), "ms", 2))
    row("State latency, p99", fmt(median("p99"), "ms", 2))
    row("State latency, worst (median of rounds)", fmt(median("max"), "ms", 1))
    row("State latency, worst of all rounds",
        fmt({runtime: max(max(r.latencies_ms) for r in rounds)
             for runtime, rounds in runs.items() if rounds}, "ms", 1))
    row("State calls per round", fmt(median("calls"), "", 0))
    row(f"throughput, {size_mib} MiB to file://", fmt(median("mb_s"), "MB/s", 0))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *values]) + " |" for label, values in rows]
    counts = ", ".join(f"{SHORT[runtime]} {len(rounds)}" for runtime, rounds in runs.items())
    title = (f"State every {interval_ms:g} ms over the shim socket while the container writes "
             f"{size_mib} MiB through file://; rounds: {counts}; {os.cpu_count()} CPUs")
    return title + "\n\n" + "\n".join(lines)


def _figure(result: Round, figure: str) -> float:
    match figure:
        case "p50":
            return result.percentile(0.5)
        case "p99":
            return result.percentile(0.99)
        case "max":
            return max(result.latencies_ms)
        case "calls":
            return float(len(result.latencies_ms))
        case "mb_s":
            return result.throughput_mb_s
    raise ValueError(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help="interleaved rounds per runtime")
    parser.add_argument("--size-mib", type=int, default=DEFAULT_SIZE_MIB,
                        help="MiB the container writes")
    parser.add_argument("--interval-ms", type=float, default=DEFAULT_INTERVAL_MS,
                        help="time between State calls")
    parser.add_argument("--runtime", action="append", dest="runtimes",
                        help=f"runtime to measure (repeatable; default {PYSHIM} and {RUNC_V2})")
    args = parser.parse_args()
    runtimes: list[str] = args.runtimes or RUNTIMES
    reason = missing_requirements()
    if reason is not None:
        sys.exit(f"bench.state_under_load: {reason}")
    runs: dict[str, list[Round]] = {runtime: [] for runtime in runtimes}
    expected = args.size_mib * MIB
    with private_containerd() as (containerd, rootfs):
        for index in range(args.rounds):
            order = runtimes if index % 2 == 0 else list(reversed(runtimes))
            for runtime in order:
                result = one_round(containerd, runtime, rootfs, index, args.size_mib,
                                   args.interval_ms / 1000)
                if result.size != expected:
                    print(f"{SHORT[runtime]}: round {index + 1}: the log file has "
                          f"{result.size} bytes, not {expected}; dropped", file=sys.stderr)
                    continue
                runs[runtime].append(result)
                print(f"round {index + 1}/{args.rounds} {SHORT[runtime]}: "
                      f"p99 {result.percentile(0.99):.2f} ms, worst "
                      f"{max(result.latencies_ms):.1f} ms, "
                      f"{result.throughput_mb_s:.0f} MB/s", file=sys.stderr)
    print(table(runs, args.size_mib, args.interval_ms))


if __name__ == "__main__":
    main()
