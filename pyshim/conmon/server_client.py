"""The launched process's side of the warm monitor-server (`server.py`): hand our fds, argv and
environment over, get the PID of a monitor forked from the warm server, exit as conmon's parent
does after its fork.

Lean (imported by every launch): `_socket`, `marshal`, `os`, `sys`, `time`, `zlib`. When no
server answers, a server is started in the background for the next launches and this one forks
its own monitor (the cold path, as before): nobody waits for a server to warm up.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys
import time
import zlib
from collections.abc import Sequence

#: The servers live here (directory 0700, sockets 0600): one per installed code and Python.
SERVER_DIR = "/run/pyshim/conmon"
#: `0` (podman: `conmon_env_vars`) disables the server: every monitor is forked by its launch
#: (read by cli.py before this module is imported).
ENABLE_VARIABLE = "PYSHIM_CONMON_SERVER"
#: How long a launch waits for the server's answer (its child replies within milliseconds).
REPLY_TIMEOUT = 5.0
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_FDS = 250  # SCM_RIGHTS carries at most 253 fds per message

_BOOT = ("import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; "
         "from pyshim.conmon.server import main; sys.exit(main(sys.argv[1:]))")


def socket_path(package_dir: str = PACKAGE_DIR) -> str:
    """One server per code tree and interpreter: checkouts side by side never share one."""
    key = zlib.crc32(f"{package_dir}\0{sys.executable}".encode())
    return os.path.join(SERVER_DIR, f"{key:08x}.sock")


def code_stamp(package_dir: str = PACKAGE_DIR) -> str:
    """Changes when a module of the package is changed, added or removed: a server running
    older code is told to exit (its children would run code that differs from ours)."""
    count = size = newest = 0
    pending = [package_dir]
    while pending:
        with os.scandir(pending.pop()) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith((".py", ".so")):
                    info = entry.stat()
                    count += 1
                    size += info.st_size
                    newest = max(newest, info.st_mtime_ns)
    return f"{count}:{size}:{newest}:{sys.hexversion:x}"


def hand_over(argv: Sequence[bytes], fds: Sequence[int], start: int | None) -> int | None:
    """The PID of a monitor the server forked for this command line, holding copies of `fds`
    (0-2, the channels, preserved fds) at the same numbers; None if no server could do it (one
    is then started for the next launch, and the caller forks the monitor itself)."""
    path = socket_path()
    fds = [fd for fd in fds if _is_open(fd)][:_MAX_FDS]
    with open("/proc/self/cgroup", encoding="ascii", errors="replace") as cgroup:
        cgroups = cgroup.read()
    mask = os.umask(0)
    os.umask(mask)
    request = marshal.dumps({
        "stamp": code_stamp(), "argv": list(argv), "environ": dict(os.environ),
        "cwd": os.getcwd(), "umask": mask, "fds": fds, "start": start, "cgroup": cgroups,
    })
    rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
    for _attempt in range(2):
        connection = _connect(path)
        if connection is None:
            launch_server(path)
            return None
        try:
            connection.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            reply = marshal.loads(connection.recv(65536) or marshal.dumps({}))
        except (OSError, ValueError, EOFError, TypeError):
            return None
        finally:
            connection.close()
        if not isinstance(reply, dict):
            return None
        if not reply.get("stale"):
            pid = reply.get("pid")
            return pid if isinstance(pid, int) and pid > 0 else None
        _wait_gone(path)  # it runs older code and is exiting: start today's
    return None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _connect(path: str) -> _socket.socket | None:
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    connection.settimeout(REPLY_TIMEOUT)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return None
    return connection


def _wait_gone(path: str, wait: float = 1.0) -> None:
    deadline = time.monotonic() + wait
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def launch_server(path: str) -> None:
    """Start a server at `path` in the background: a fresh interpreter in its own session,
    stdio on /dev/null and its log; it gives up if another one holds the lock."""
    code_root = os.path.dirname(PACKAGE_DIR)
    site = next((entry for entry in sys.path if entry.endswith("-packages")), code_root)
    try:
        os.makedirs(SERVER_DIR, mode=0o700, exist_ok=True)
    except OSError:
        return
    pid = os.fork()
    if pid:
        # Reaped at once: the server's own child is what keeps running (no zombie of ours
        # outlives this short process anyway, but the parent's wait() must not see it).
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)  # the server is re-parented: it is nobody's child to wait for
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(path[: -len(".sock")] + ".log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        for target, fd in ((0, devnull), (1, devnull), (2, log)):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("_OCI_") and key != "LISTEN_PID"}
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", _BOOT, code_root, site,
                                   path], env)
    finally:
        os._exit(127)
