"""k8s-file throughput of the conmon monitor's output path, beside conmon 2.1.6 in the same run.

pyshim: a payload writes into a pipe, one OutputPump (8 KiB reads, as conmon) hands each read to
the k8s-file sink (and, with --attach, to the attach server, one client reading in another
process). conmon: `conmon --sync` with a stand-in runtime that starts the same payload (no runc,
no podman: only the output path and the process around it; timed from the payload's start).
Both without fsync (--no-sync-log). The payload is `yes LINE | head -c SIZE`. Runs alternate;
the figure is the median MiB/s of the container's output (not of the larger log).

This measures the blocks, not the monitor podman runs (that one adds start-up and the
channels); the issue's paired figure through real podman is the k8s-file row of the suite's
`conmon` phase (bench/suite_conmon.py).

Usage: python -m bench.conmon_pump [--size MiB] [--line BYTES] [--runs N] [--attach]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import uvloop

from pyshim.conmon.attach import AttachServer
from pyshim.conmon.logdrivers import open_log_drivers, parse_log_paths
from pyshim.io.fanout import CONMON_CHUNK, Fanout, OutputPump
from pyshim.reaper import Reaper

CID = "bench0123456789abcdef"
# The payload waits for `go` (so that an attach client can connect first).
RUNTIME = """#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --pid-file) pidfile=$2; shift;; esac; shift
done
/bin/sh -c 'while [ ! -e "$BENCH_GO" ]; do sleep 0.01; done; '"$BENCH_PAYLOAD" &
printf %s $! > "$pidfile"
"""
# An attach client in its own process: reads packets until EOF, prints the stdout byte count
# (conmon also sends `yes`'s "Broken pipe" from stderr).
CLIENT = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
h = os.open(sys.argv[1], os.O_PATH)
s.connect(f"/proc/self/fd/{h}")
print("ready", flush=True)
n = 0
while packet := s.recv(8193):
    if packet[0] == 2:
        n += len(packet) - 1
print(n, flush=True)
"""


def payload(size: int, line: int) -> str:
    return f"yes {'x' * (line - 1)} | head -c {size}"


def start_client(path: str) -> subprocess.Popen[str]:
    client = subprocess.Popen([sys.executable, "-c", CLIENT, path], stdout=subprocess.PIPE,
                              text=True)
    assert client.stdout is not None
    assert client.stdout.readline().strip() == "ready"
    return client


def client_bytes(client: subprocess.Popen[str]) -> int:
    assert client.stdout is not None
    count = int(client.stdout.readline())
    client.wait()
    return count


def conmon_seconds(conmon: str, directory: str, size: int, line: int, attach: bool) -> float:
    runtime = os.path.join(directory, "runtime")
    with open(runtime, "w") as file:
        file.write(RUNTIME)
    os.chmod(runtime, 0o755)
    log = os.path.join(directory, "conmon.log")
    go = os.path.join(directory, "go")
    argv = [conmon, "--api-version", "1", "-c", CID, "-u", CID, "-r", runtime, "-b", directory,
            "-p", os.path.join(directory, "pidfile"), "--full-attach", "-l", f"k8s-file:{log}",
            "--no-sync-log", "--sync"]
    env = {**os.environ, "BENCH_PAYLOAD": payload(size, line), "BENCH_GO": go}
    monitor = subprocess.Popen(argv, env=env, cwd=directory, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    client = None
    try:
        socket_path = os.path.join(directory, "attach")
        deadline = time.monotonic() + 30
        while not os.path.exists(socket_path) or not os.path.exists(
                os.path.join(directory, "pidfile")):
            if time.monotonic() > deadline:
                raise RuntimeError("conmon did not start")
            time.sleep(0.005)
        if attach:
            client = start_client(socket_path)
        started = time.perf_counter()
        with open(go, "w"):
            pass
        monitor.wait(timeout=600)
        elapsed = time.perf_counter() - started
        if client is not None:
            got = client_bytes(client)
            client = None
            assert got == size, (got, size)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
        if client is not None:
            client.kill()
            client.wait()
    os.unlink(log)
    os.unlink(go)
    return elapsed


def pyshim_seconds(directory: str, size: int, line: int, attach: bool,
                   chunk: int = CONMON_CHUNK) -> float:
    log = os.path.join(directory, "pyshim.log")

    async def monitor() -> float:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        client: subprocess.Popen[str] | None = None
        try:
            drivers = open_log_drivers(parse_log_paths([log]), cid=CID, no_sync_log=True)
            sinks = list(drivers.sinks)
            server = None
            if attach:
                server = AttachServer.create(bundle=directory, cuuid=CID, full_attach=True)
                server.start()
                sinks.append(server)
                client = start_client(server.path)
                for _ in range(10_000):  # until the loop has accepted it
                    if server.clients:
                        break
                    await asyncio.sleep(0.001)
            read, write = os.pipe2(os.O_CLOEXEC)
            pump = OutputPump(read, "stdout", Fanout(sinks), name="bench", chunk=chunk)
            started = time.perf_counter()
            _, exited = reaper.spawn(["/bin/sh", "-c", payload(size, line)], stdout=write)
            os.close(write)
            pump.start()
            await exited
            await pump.wait()
            drivers.close()
            if server is not None:
                await server.close(60)
                server.unlink()
            elapsed = time.perf_counter() - started
            assert pump.pumped == size, pump.pumped
            if client is not None:
                assert client_bytes(client) == size
                client = None
            return elapsed
        finally:
            if client is not None:
                client.kill()
                client.wait()
            reaper.uninstall()

    elapsed = uvloop.run(monitor())
    os.unlink(log)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="MiB of output (default 512)")
    parser.add_argument("--line", type=int, default=100, help="bytes per line (default 100)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--attach", action="store_true",
                        help="one attach client (another process) reads all output too")
    parser.add_argument("--chunk", type=int, default=CONMON_CHUNK,
                        help=f"pyshim's read size (default {CONMON_CHUNK}, conmon's)")
    parser.add_argument("--dir", default=None, help="where the logs go (default: a temp dir)")
    args = parser.parse_args()
    size = args.size << 20
    conmon = shutil.which("conmon")
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pump-", dir=args.dir) as directory:
        for _ in range(args.runs):
            ours.append(size / 2**20 / pyshim_seconds(directory, size, args.line, args.attach,
                                                      args.chunk))
            if conmon:
                theirs.append(size / 2**20 / conmon_seconds(conmon, directory, size, args.line,
                                                            args.attach))
    print(f"k8s-file, {args.size} MiB of {args.line}-byte lines, median of {args.runs}:")
    client = " + attach client" if args.attach else ""
    print(f"  pyshim pump ({args.chunk}-byte reads){client}: "
          f"{statistics.median(ours):7.0f} MiB/s")
    if theirs:
        print(f"  conmon 2.1.6{client}: {statistics.median(theirs):7.0f} MiB/s")
        print(f"  ratio pyshim/conmon: {statistics.median(ours) / statistics.median(theirs):.2f}")


if __name__ == "__main__":
    main()
