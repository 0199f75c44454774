"""The warm fork-server: one per containerd address, with the whole shim already imported; each
`start` gets a daemon forked from it in a millisecond instead of a cold interpreter.

Holds no per-container state and runs no event loop (a child forked from a running loop would
share its epoll): a blocking accept loop. A forked daemon depends on nothing of ours after the
fork: its own session, its own loop, and it outlives us. Reaps the daemons it forked; exits
when `start` reports newer installed code, so the next one runs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import struct
import sys

from pyshim.shim import forkclient
from pyshim.shim.start import DaemonConfig, become_daemon

log = logging.getLogger("pyshim.forkserver")

#: Modules the daemon would otherwise import lazily while serving (checked by a test): each
#: one imported after the fork costs every daemon its own private copy.
PRELOAD = (
    "pyshim.shim.daemon",
    "pyshim.shim.info",
    "json",
    "tempfile",
    "traceback",
    "urllib.parse",
)
_MAX_REQUEST = 1 << 20
#: Our own fds (lock, listening socket): a child closes them first, or the fork-server's
#: socket and lock would outlive the fork-server in every daemon.
_own_fds: list[int] = []


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: forkserver SOCKET", file=sys.stderr)
        return 2
    path = argv[0]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s forkserver[%(process)d] %(levelname)s %(message)s")
    lock = _take_lock(path)
    if lock is None:
        return 0  # another fork-server serves this address
    listener = _listen(path)
    _own_fds[:] = [lock, listener.fileno()]
    stamp = forkclient.code_stamp()
    for module in PRELOAD:
        __import__(module)
    # Objects that exist now are shared with every child; frozen, no collection ever writes
    # to their pages (which would copy them into each child).
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _stop)
    log.info("serving %s (code %s)", path, stamp)
    try:
        _serve(listener, stamp)
    except _Stop:
        pass
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)
        listener.close()
    log.info("exiting")
    return 0


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _take_lock(path: str) -> int | None:
    fd = os.open(path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd  # held (never closed) for as long as we live


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # we hold the lock: whatever is there is a dead fork-server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def _serve(listener: socket.socket, stamp: str) -> None:
    while True:
        try:
            connection, _ = listener.accept()
        except OSError as error:
            if error.errno in (errno.EINTR, errno.ECONNABORTED):
                continue
            raise
        with connection:
            if not _handle(connection, stamp):
                return


def _handle(connection: socket.socket, stamp: str) -> bool:
    """Serve one request; False when we must exit (the installed code changed)."""
    pid, uid, _gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    if uid != os.geteuid():
        log.warning("refused a request from pid %d (uid %d)", pid, uid)
        return True
    connection.settimeout(5.0)
    try:
        data, fds, _flags, _ = socket.recv_fds(connection, _MAX_REQUEST, 2)
    except OSError as error:
        log.warning("bad request from pid %d: %s", pid, error)
        return True
    try:
        request = json.loads(data)
        if request.get("stamp") != stamp:
            log.info("installed code changed (%s → %s): exiting", stamp, request.get("stamp"))
            connection.send(b'{"stale": true}')
            return False
        if len(fds) != 2:
            raise ValueError(f"expected 2 file descriptors, got {len(fds)}")
        config = _config(request["config"])
        environment = {str(k): str(v) for k, v in request["environment"].items()}
        score = request.get("oom_score_adj")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("bad request from pid %d: %s", pid, error)
        with contextlib.suppress(OSError):
            connection.send(json.dumps({"error": str(error)}).encode())
        for fd in fds:
            os.close(fd)
        return True
    listener_fd, log_fd = fds
    child = os.fork()
    if child == 0:
        _child(connection, config, environment, score, listener_fd, log_fd)
    os.close(listener_fd)
    os.close(log_fd)
    log.info("forked daemon %d for %s/%s", child, config.namespace, config.id)
    return True


def _config(fields: dict[str, object]) -> DaemonConfig:
    options = fields["options"]
    if not (isinstance(options, list) and len(options) == 2):
        raise ValueError("options must be [type_url, value]")
    return DaemonConfig(
        namespace=str(fields["namespace"]), id=str(fields["id"]),
        address=str(fields["address"]), ttrpc_address=str(fields["ttrpc_address"]),
        bundle=str(fields["bundle"]), socket_path=str(fields["socket_path"]),
        debug=bool(fields["debug"]), publish_binary=str(fields["publish_binary"]),
        options=(str(options[0]), str(options[1]).encode("latin-1")),
    )


def _child(
    connection: socket.socket,
    config: DaemonConfig,
    environment: dict[str, str],
    score: object,
    listener_fd: int,
    log_fd: int,
) -> None:
    """In the forked child: become start's daemon, as if start had forked it."""
    code = 1
    try:
        for fd in _own_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(config.bundle)
        # What ps shows: the shim it now is, not the fork-server it was.
        set_command_line(f"containerd-shim-pyshim-v1 -namespace {config.namespace} "
                         f"-id {config.id} -address {config.address}")
        listener = socket.socket(fileno=listener_fd)
        with contextlib.suppress(OSError):
            connection.send(json.dumps({"pid": os.getpid()}).encode())
        connection.close()
        code = become_daemon(config, listener, log_fd,
                             score if isinstance(score, int) else None)
    except BaseException:
        log.exception("daemon for %s/%s failed to start", config.namespace, config.id)
    finally:
        os._exit(code)


def set_command_line(title: str) -> None:
    """Overwrite our argv memory (what /proc/PID/cmdline shows) with `title`, cut to fit.

    The kernel reads the original argv area; writing it in place needs no privilege (unlike
    PR_SET_MM), and our own argv is long enough for a shim's command line.
    """
    with open("/proc/self/stat", "rb") as stat_file:
        stat = stat_file.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    size = end - start
    data = title.encode()[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
