"""Where a pyshim task start spends its time, without containerd: the `start` command's wall
time (interpreter start, lean imports, bind, fork, print) and the time from its exit until the
forked daemon answers a first Task/Connect (the daemon's cold imports and set-up).

Each round uses a fresh bundle directory and container id under one containerd address (a temp
path), so rounds after the first find the warm fork-server (`--cold`: PYSHIM_FORKSERVER=0, the
daemon forked from `start` with cold imports). The daemon is stopped with SIGTERM and waited
for by PID; the fork-server is stopped by PID at the end (this process is child subreaper).

Usage: python -m bench.shim_start [--rounds N] [--cold]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import prctl
import psutil

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.shim import forkclient
from pyshim.ttrpc import Client

REPO = Path(__file__).resolve().parents[1]
SHIM = str(REPO / "bin" / "containerd-shim-pyshim-v1")


async def first_reply(address: str) -> int:
    async with await Client.connect(address, timeout=10) as client:
        reply = await client.call("containerd.task.v2.Task", "Connect",
                                  shim_pb2.ConnectRequest(id="none"),
                                  shim_pb2.ConnectResponse, timeout=10)
    return int(reply.shim_pid)


def one_round(base: Path, index: int, shim: str = SHIM) -> tuple[float, float]:
    bundle = base / f"bundle-{index}"
    bundle.mkdir()
    (bundle / "config.json").write_text("{}")
    started = time.perf_counter()
    address = subprocess.run(
        [shim, "-namespace", "bench", "-address", str(base / "containerd.sock"),
         "-id", f"b{index}", "start"],
        cwd=bundle, stdin=subprocess.DEVNULL, capture_output=True, check=True,
    ).stdout.decode()
    printed = time.perf_counter()
    shim_pid = asyncio.run(first_reply(address))
    answered = time.perf_counter()
    stop_and_wait(shim_pid)
    return (printed - started) * 1000, (answered - printed) * 1000


def stop_and_wait(pid: int) -> None:
    """SIGTERM `pid` and wait until it is gone (our child, or the fork-server's)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=10)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop_forkserver(address: str) -> None:
    path = forkclient.socket_path(address)
    for process in psutil.Process().children():
        if forkclient.__name__.replace("client", "server") in " ".join(process.cmdline()):
            stop_and_wait(process.pid)
    for suffix in (".sock", ".lock", ".log"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.removesuffix(".sock") + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cold", action="store_true", help="fork-server off")
    args = parser.parse_args()
    rounds = args.rounds
    os.environ[forkclient.ENABLE_VARIABLE] = "0" if args.cold else "1"
    prctl.set_child_subreaper(1)
    base = Path(tempfile.mkdtemp(prefix="pyshim-bench-", dir="/tmp"))
    try:
        results = [one_round(base, index) for index in range(rounds + 1)]
    finally:
        stop_forkserver(str(base / "containerd.sock"))
        shutil.rmtree(base, ignore_errors=True)
    first, results = results[0], results[1:]
    start = statistics.median(r[0] for r in results)
    ready = statistics.median(r[1] for r in results)
    mode = "fork-server off" if args.cold else "fork-server on"
    print(f"pyshim start, {mode}, {rounds} rounds after a first one "
          f"({first[0]:.1f} + {first[1]:.1f} ms), medians\n")
    print("| phase | ms |\n|---|---|")
    print(f"| `start` command (exec → address printed → exit) | {start:.1f} |")
    print(f"| daemon ready (start exited → first Task/Connect answered) | {ready:.1f} |")
    print(f"| total | {start + ready:.1f} |")


if __name__ == "__main__":
    main()
