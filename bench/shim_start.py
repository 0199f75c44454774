"""Where a pyshim task start spends its time, without containerd: the `start` command's wall
time (interpreter start, lean imports, bind, fork, print) and the time from its exit until the
forked daemon answers a first Task/Connect (the daemon's cold imports and set-up).

Each round uses a fresh bundle directory and a fresh socket (address under a temp dir); the
daemon is stopped with SIGTERM and reaped by PID (this process is child subreaper).

Usage: python -m bench.shim_start [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import prctl

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client

REPO = Path(__file__).resolve().parents[1]
SHIM = str(REPO / "bin" / "containerd-shim-pyshim-v1")


async def first_reply(address: str) -> int:
    async with await Client.connect(address, timeout=10) as client:
        reply = await client.call("containerd.task.v2.Task", "Connect",
                                  shim_pb2.ConnectRequest(id="none"),
                                  shim_pb2.ConnectResponse, timeout=10)
    return int(reply.shim_pid)


def one_round(base: Path, index: int) -> tuple[float, float]:
    bundle = base / f"bundle-{index}"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    started = time.perf_counter()
    address = subprocess.run(
        [SHIM, "-namespace", "bench", "-address", str(base / "containerd.sock"),
         "-id", f"b{index}", "start"],
        cwd=bundle, stdin=subprocess.DEVNULL, capture_output=True, check=True,
    ).stdout.decode()
    printed = time.perf_counter()
    shim_pid = asyncio.run(first_reply(address))
    answered = time.perf_counter()
    os.kill(shim_pid, signal.SIGTERM)
    os.waitpid(shim_pid, 0)  # re-parented to us: we are child subreaper
    return (printed - started) * 1000, (answered - printed) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    prctl.set_child_subreaper(1)
    base = Path(tempfile.mkdtemp(prefix="pyshim-bench-", dir="/tmp"))
    try:
        results = [one_round(base, index) for index in range(rounds)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    start = statistics.median(r[0] for r in results)
    ready = statistics.median(r[1] for r in results)
    print(f"pyshim start, {rounds} rounds (medians)\n")
    print("| phase | ms |\n|---|---|")
    print(f"| `start` command (exec → address printed → exit) | {start:.1f} |")
    print(f"| daemon ready (start exited → first Task/Connect answered) | {ready:.1f} |")
    print(f"| total | {start + ready:.1f} |")


if __name__ == "__main__":
    main()
