"""What a launched `pyshim-conmon` costs cold, and with the warm monitor-server (issue 12):
median of N interleaved rounds of

* `interpreter`: `python -I -S -c pass` (what any Python launcher pays);
* `cold: exit` / `cold: sync`: `bin/pyshim-conmon` with a valid podman-like command line and no
  server, from spawn to its exit (podman's wait()) and to the first sync message (the
  placeholder monitor's; a real monitor sends the PID there);
* `monitor imports`: a fresh interpreter importing what a monitor on pyshim's engine imports
  (asyncio, uvloop, the engine's process/io/reaper/logs/runtime), minus `interpreter`: what
  every cold monitor adds before its PID message, and what the server has already paid;
* `handoff: exit` / `handoff: sync`: the same launch handing over to a running server.

Usage: python -m bench.conmon_handoff [--runs N]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import prctl

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = str(REPO / "bin" / "pyshim-conmon")
SITE = next(str(path) for path in (REPO / ".venv" / "lib").glob("python3*/site-packages"))
#: What a monitor built on pyshim's engine imports (the server preloads the same).
MONITOR_IMPORTS = ("asyncio", "uvloop", "json", "pyshim.reaper", "pyshim.process",
                   "pyshim.io.pipes", "pyshim.io.terminal", "pyshim.logs", "pyshim.runtime")


def interpreter_ms() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return (time.perf_counter() - started) * 1000


def monitor_imports_ms() -> float:
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {SITE!r}]; "
            f"import {', '.join(MONITOR_IMPORTS)}")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-S", "-c", code], check=True)
    return (time.perf_counter() - started) * 1000


def launch_ms(directory: Path, server: str) -> tuple[float, float]:
    """(spawn → exit, spawn → first sync message) of one podman-like launch."""
    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    environment = {"PATH": "/usr/bin:/bin", "PYSHIM_CONMON_SERVER": server,
                   "_OCI_SYNCPIPE": str(sync_child.fileno())}
    words = ["--api-version", "1", "-c", "bench", "-u", "bench", "-r", str(directory / "rt"),
             "-b", str(directory), "-p", str(directory / "pidfile"), "-l", "none",
             "--full-attach", "--conmon-pidfile", str(directory / "conmon.pid")]
    exited: list[float] = []
    try:
        started = time.perf_counter()
        process = subprocess.Popen([LAUNCHER, *words], env=environment,
                                   pass_fds=[sync_child.fileno()], stdin=subprocess.DEVNULL)
        # The message may come before or after the exit: each is timed where it happens.
        def wait_exit() -> None:
            process.wait(60)
            exited.append(time.perf_counter())

        waiter = threading.Thread(target=wait_exit)
        waiter.start()
        sync_child.close()
        sync_parent.settimeout(60)
        sync_parent.recv(4096)
        messaged = time.perf_counter()
        waiter.join(60)
        if process.returncode != 0:
            raise RuntimeError(f"the launch exited {process.returncode}")
    finally:
        sync_child.close()
        sync_parent.close()
    return (exited[0] - started) * 1000, (messaged - started) * 1000


def start_server(path: str) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, "-m", "pyshim.conmon.server", path], cwd=REPO,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the monitor-server did not start")
        time.sleep(0.01)
    return server


def reap_orphans(server: subprocess.Popen[bytes], wait: float = 0.0) -> None:
    """Cold launches leave their daemons to the nearest subreaper, us: reap the ones that have
    exited (all of them, waiting up to `wait` seconds); never the server."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == server.pid:
            raise RuntimeError("the monitor-server exited")
        if pid == 0:
            if time.monotonic() >= deadline or _only_child_left(server.pid):
                return
            time.sleep(0.01)


def _only_child_left(server_pid: int) -> bool:
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != server_pid:
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[1].decode() == me:
                return False
    return True


def figures(runs: int) -> dict[str, float]:
    prctl.set_child_subreaper(1)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="conmon-handoff-") as temporary:
        directory = Path(temporary)
        runtime = directory / "rt"
        runtime.write_text("#!/bin/sh\nexit 1\n")
        runtime.chmod(0o755)
        socket_path = str(directory / "server" / "monitor.sock")
        os.makedirs(os.path.dirname(socket_path), mode=0o700)
        server = start_server(socket_path)
        try:
            for _ in range(runs):
                for name, value in (
                    ("interpreter", interpreter_ms()),
                    ("monitor imports", monitor_imports_ms()),
                ):
                    samples.setdefault(name, []).append(value)
                cold = launch_ms(directory, "0")
                warm = launch_ms(directory, socket_path)
                for name, value in (("cold: exit", cold[0]), ("cold: sync", cold[1]),
                                    ("handoff: exit", warm[0]), ("handoff: sync", warm[1])):
                    samples.setdefault(name, []).append(value)
                reap_orphans(server)
        finally:
            reap_orphans(server, wait=30)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["monitor imports"] -= result["interpreter"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    values = figures(options.runs)
    for name, value in values.items():
        print(f"{name:18s} {value:7.1f} ms (median of {options.runs})")
    cold_monitor = values["cold: sync"] + values["monitor imports"]
    print(f"{'cold monitor ready':18s} {cold_monitor:7.1f} ms (cold: sync + monitor imports)")
    print(f"{'handoff saves':18s} {cold_monitor - values['handoff: sync']:7.1f} ms per launch")


if __name__ == "__main__":
    main()
