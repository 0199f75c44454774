"""`start`'s side of the warm fork-server: ask it for a daemon, bringing one up if none answers.

Lean like `start` itself (imported by every start): `_socket`, `marshal`, `os` and `time`.
When none answers, this start launches one and waits for it (up to LAUNCH_WAIT to listen,
REPLY_TIMEOUT for the daemon); if that fails too, the caller forks its own daemon.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys
import time

from pyshim.codestamp import code_listing
from pyshim.shim.start import DaemonConfig, sha256_hex

#: One fork-server per containerd address lives here: directory 0700, sockets 0600
#: (`$PYSHIM_RUN_DIR/forkserver` when that is set, as containerd's environment may say).
FORKSERVER_DIR = "/run/pyshim/forkserver"
RUN_DIR_VARIABLE = "PYSHIM_RUN_DIR"
#: Set to 0 (in containerd's environment) to never use a fork-server.
ENABLE_VARIABLE = "PYSHIM_FORKSERVER"
#: How long a start waits for the fork-server's daemon to say it is there.
REPLY_TIMEOUT = 5.0
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BOOT = ("import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; "
         "from pyshim.shim.forkserver import main; sys.exit(main(sys.argv[1:]))")


def enabled() -> bool:
    return os.environ.get(ENABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def forkserver_dir() -> str:
    run_dir = os.environ.get(RUN_DIR_VARIABLE)
    return os.path.join(run_dir, "forkserver") if run_dir else FORKSERVER_DIR


def socket_path(containerd_address: str) -> str:
    return os.path.join(forkserver_dir(), sha256_hex(containerd_address.encode())[:32] + ".sock")


def code_stamp(package_dir: str = PACKAGE_DIR) -> str:
    """Identifies the installed code: any changed, added or removed module changes it."""
    return sha256_hex(code_listing(package_dir))[:16]


def request_daemon(
    config: DaemonConfig, listener: _socket.socket, log_fd: int, oom_score_adj: int | None
) -> int | None:
    """The pid of a daemon the fork-server forked for `config`, serving `listener`; None if
    no fork-server could do it, and the caller must fork the daemon itself.

    With none running (the first start for this containerd, or after one died or was found
    stale), this start launches one and waits for it: its imports take about as long as a
    daemon's own cold start would, and then every daemon comes from it.
    """
    path = socket_path(config.address)
    request = marshal.dumps({
        "stamp": code_stamp(),
        "config": {
            "namespace": config.namespace, "id": config.id, "address": config.address,
            "ttrpc_address": config.ttrpc_address, "bundle": config.bundle,
            "socket_path": config.socket_path, "debug": config.debug,
            "publish_binary": config.publish_binary, "options": config.options,
        },
        "environment": dict(os.environ),
        "oom_score_adj": oom_score_adj,
    })
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (listener.fileno(), log_fd))
    for _attempt in range(3):
        connection = _connect(path)
        if connection is None:
            launch(path, config.address)
            connection = _connect(path, wait=LAUNCH_WAIT)
            if connection is None:
                return None
        try:
            connection.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            reply = marshal.loads(connection.recv(65536) or marshal.dumps({}))
        except (OSError, ValueError, EOFError, TypeError):
            return None  # the daemon lock settles who serves if one was forked after all
        finally:
            connection.close()
        if not isinstance(reply, dict):
            return None
        if not reply.get("stale"):
            pid = reply.get("pid")
            return pid if isinstance(pid, int) else None
        # That one runs older code and is exiting; the next attempt launches a new one.
        _wait_gone(path)
    return None


#: How long a start waits for a fork-server it launched to listen.
LAUNCH_WAIT = 2.0


def _connect(path: str, wait: float = 0.0) -> _socket.socket | None:
    """A connection to the fork-server at `path`, retried for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        connection = _socket.socket(_socket.AF_UNIX,
                                    _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        connection.settimeout(REPLY_TIMEOUT)
        try:
            connection.connect(path)
            return connection
        except OSError:
            connection.close()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _wait_gone(path: str, wait: float = 1.0) -> None:
    """Until the stale fork-server has removed its socket (it does so as it exits)."""
    deadline = time.monotonic() + wait
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def launch(path: str, containerd_address: str) -> None:
    """Start a fork-server at `path` for `containerd_address` in the background (it gives up
    if another one runs after waiting for a stale one to exit)."""
    code_root = os.path.dirname(PACKAGE_DIR)
    site = next((entry for entry in sys.path if entry.endswith("site-packages")), code_root)
    try:  # noqa: SIM105 (not contextlib: start's imports are timed)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    except OSError:
        pass
    pid = os.fork()
    if pid:
        return
    try:
        os.setsid()
        # Never hold start's stdout: containerd reads it until EOF.
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(path[: -len(".sock")] + ".log",
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for target, fd in ((0, devnull), (1, devnull), (2, log)):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        # A fresh interpreter rather than this start's process: it shows as what it is in
        # `ps`, and imports everything itself.
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _BOOT, code_root, site,
                                  path, containerd_address])
    finally:
        os._exit(127)
