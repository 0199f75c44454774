"""The launched `pyshim-conmon`'s side of the warm monitor-server (`server.py`): after the
start byte, hand every open fd, the environment and the command line to the server, get back
the PID of the monitor it forked, and exit like conmon's first process.

Lean (it runs in every launched process): `_socket`, `marshal`, `os`. When no server answers,
the caller forks the monitor itself and `launch_server` starts one for the next container.
"""

from __future__ import annotations

import _socket
import binascii
import marshal
import os
import sys

from pyshim.codestamp import code_listing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Where a root server would listen by default (directory 0700, socket 0600).
DEFAULT_SOCKET = "/run/pyshim/conmon/monitor.sock"
#: The server's socket path, or `1`/`on` (the default, also when unset) for DEFAULT_SOCKET;
#: empty or 0/off: no server, every launch forks its own monitor as conmon does. podman passes
#: it only through containers.conf's `conmon_env_vars`.
SERVER_VARIABLE = "PYSHIM_CONMON_SERVER"
#: How long the launched process waits for the monitor's "I am here".
REPLY_TIMEOUT = 5.0
#: The launcher's last word: it has the monitor's PID and exits; the monitor may start.
GO = b"go"
#: The request's size limit (environment and command line; fds travel beside it).
MAX_REQUEST = 1 << 20
#: The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD): a launcher holding more
#: (a huge --preserve-fds) forks its own monitor.
MAX_FDS = 253
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def server_path(environ: Mapping[str, str]) -> str | None:
    value = environ.get(SERVER_VARIABLE, "1").strip()
    if value.lower() in ("0", "off", "no", "false", ""):
        return None
    return DEFAULT_SOCKET if value.lower() in ("1", "on", "yes", "true") else value


def code_stamp() -> str:
    """Identifies the installed code (every module of the package: the monitor runs the
    engine's too): a server running other code than the launcher's exits, and the next
    launcher starts a fresh one. ~0.3 ms."""
    text = code_listing(PACKAGE_DIR)
    # Not a security check (the peer is root, checked by uid): any change changes it.
    return f"{binascii.crc32(text):08x}-{len(text)}"


def open_fd_flags(skip: Sequence[int]) -> list[tuple[int, bool]]:
    """(fd, close-on-exec) for every open fd but `skip`: the table the monitor recreates."""
    table = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in skip:
            continue
        try:
            table.append((fd, not os.get_inheritable(fd)))
        except OSError:
            continue  # listdir's own fd, closed by now
    return sorted(table)


def request_monitor(path: str, argv: Sequence[bytes], environ: Mapping[str, str],
                    inherited: Sequence[int], k8s_log_fd: int | None) -> int | None:
    """The PID of the monitor the server at `path` forked for us, or None (no server, a stale
    one, or it refused): then the caller forks the monitor itself."""
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    connection.settimeout(REPLY_TIMEOUT)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        return None
    try:
        table = open_fd_flags(skip=(connection.fileno(),))
        if len(table) > MAX_FDS:
            return None
        request = marshal.dumps({
            "stamp": code_stamp(),
            "argv": list(argv),
            "environ": dict(environ),
            "cwd": os.getcwd(),
            "umask": _umask(),
            "fds": table,
            "inherited": list(inherited),
            "k8s_log_fd": k8s_log_fd,
            # Ours, read here: we may be gone (podman reaped) when the monitor applies them.
            "proc": {name: _read(f"/proc/self/{name}")
                     for name in ("cgroup", "oom_score_adj", "limits")},
        })
        if len(request) > MAX_REQUEST:
            return None
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd, _ in table)
        connection.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        reply = marshal.loads(connection.recv(65536) or marshal.dumps({}))
        pid = reply.get("pid") if isinstance(reply, dict) else None
        if not isinstance(pid, int):
            return None
        # Only now may it run the runtime: had we given up waiting and forked our own, it
        # would see EOF here instead and leave, and one container would not get two monitors.
        connection.send(GO)
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        connection.close()
    return pid


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError:
        return ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_BOOT = ("import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; "
         "from pyshim.conmon.server import main; sys.exit(main(sys.argv[1:]))")


def launch_server(path: str) -> None:
    """Start a server at `path` in the background, for the next launches (it gives up if
    another one holds the lock). Never holds the caller's stdio."""
    code_root = os.path.dirname(PACKAGE_DIR)
    site = next((entry for entry in sys.path if entry.endswith("-packages")), code_root)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError:
        return
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the intermediate child exits at once: no zombie, no wait later
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(path.removesuffix(".sock") + ".log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for target, fd in ((0, devnull), (1, devnull), (2, log)):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _BOOT, code_root, site,
                                  path])
    finally:
        os._exit(127)
