"""The fork-servers of this host, from their files (`pyshim forkserver status`, `ps`), and
stopping one (`pyshim forkserver stop`): SIGTERM by the pid its lock names, once that pid is
checked to be the server holding the lock. Never connects to a fork-server's socket (a
connection is a request: it would fork a child)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

from pyshim.shim import forkclient
from pyshim.shim import forkserver_files as files

#: How long `stop` waits for a server to remove its files.
STOP_WAIT = 10.0


@dataclass(frozen=True)
class ForkServer:
    socket: str
    state: str  # "serving", or "dead" (stale files: the next fork-server removes them)
    pid: int
    address: str  # the containerd it serves
    stamp: str  # code stamp
    files: list[str]  # which of .sock/.lock/.log exist


def list_servers(directory: str | None = None) -> list[ForkServer]:
    found = []
    for socket_path in files.sets_in(directory or forkclient.forkserver_dir()):
        base = files.stem(socket_path)
        present = [base + suffix for suffix in files.SUFFIXES if os.path.lexists(base + suffix)]
        info = files.read_info(base + ".lock")
        # The lock says whether one lives (older fork-servers wrote nothing in it); its pid
        # counts only if that process is the fork-server of this socket (not a reused pid).
        alive = files.lock_held(base + ".lock")
        pid = info.pid if info is not None and _is_forkserver(info.pid, socket_path) else 0
        if alive and not pid:
            pid = _find_pid(socket_path)  # one started by an older pyshim
        found.append(ForkServer(
            socket=socket_path, state="serving" if alive else "dead", pid=pid if alive else 0,
            address=info.address if info else "", stamp=info.stamp if info else "",
            files=present))
    return found


def _is_forkserver(pid: int, socket_path: str) -> bool:
    """pid runs the fork-server of `socket_path` (its command line names the socket)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return os.fsencode(socket_path) in cmdline.read().split(b"\0")
    except OSError:
        return False


def _find_pid(socket_path: str) -> int:
    """The process whose command line names `socket_path`, by a scan of /proc; 0 if none."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_forkserver(int(entry), socket_path):
            return int(entry)
    return 0


def stop(server: ForkServer, wait: float = STOP_WAIT) -> bool:
    """SIGTERM a serving fork-server and wait until its files are gone; True when they are.
    Its daemons are not affected (they are on their own since their fork)."""
    if server.state != "serving" or not server.pid or not _is_forkserver(server.pid,
                                                                          server.socket):
        return not os.path.exists(server.socket)
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any(os.path.lexists(path) for path in server.files if path.endswith(".sock")) \
                and not files.lock_held(files.stem(server.socket) + ".lock"):
            return True
        time.sleep(0.02)
    return False
