"""Turning a freshly forked process (a child of `start`, or of the warm fork-server) into the
serving shim daemon: its own session, stdio detached, the socket's daemon lock, the shim
cgroup, an OOM score just above containerd's, then `daemon.serve`.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import os
import socket

from pyshim.shim import wire
from pyshim.shim.start import DaemonConfig, lock_path


def spawn_daemon(
    config: DaemonConfig, listener: _socket.socket, log_fd: int, oom_score_adj: int | None
) -> int:
    """Fork the serving daemon; returns its pid in the parent, never returns in the child."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = become_daemon(config, listener, log_fd, oom_score_adj)
    finally:
        os._exit(code)


def become_daemon(
    config: DaemonConfig, listener: _socket.socket, log_fd: int, oom_score_adj: int | None
) -> int:
    """In a freshly forked child (of start or of the fork-server): detach, then serve."""
    try:
        os.setsid()
        detach_stdio(log_fd)
        if not own_listener(config.socket_path):
            return 0  # another daemon already serves this socket (see own_listener)
        _join_shim_cgroup(config.options)
        if oom_score_adj is not None:
            # The kernel should prefer the shim over containerd (raising is always allowed).
            write_best_effort("/proc/self/oom_score_adj", str(min(oom_score_adj + 1, 1000)))
        from pyshim.shim.daemon import serve

        if not isinstance(listener, socket.socket):  # start's lean _socket.socket
            listener = socket.socket(fileno=listener.detach())
        return serve(config, listener)
    except BaseException:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
        return 1


def own_listener(socket_path: str) -> bool:
    """Take the socket's daemon lock (held until we exit). Only a start that gave up waiting
    for the fork-server's daemon and forked its own can make two candidates: one serves."""
    fd = os.open(lock_path(socket_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True


def write_best_effort(path: str, text: str) -> bool:
    """Write `text` to an existing file (a /proc or cgroup knob); whether it was taken.
    Bytes through os.write, no contextlib: a text-mode file runs codecs' Python encoder
    set-up, and every distinct Python function a daemon runs copies pages of the
    fork-server's into it (docs/memory.md)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


#: Where each options type keeps shim_cgroup: runc Options field 3; the legacy CreateOptions
#: (containerd's Go client sends it for WithShimCgroup to runtimes other than runc) field 9.
SHIM_CGROUP_FIELD = {"containerd.runc.v1.Options": 3, "containerd.linux.runc.CreateOptions": 9}


def _join_shim_cgroup(options: tuple[str, bytes]) -> None:
    """The options' shim_cgroup: move the daemon there, as runc-v2 does (§1.4)."""
    type_url, value = options
    field = SHIM_CGROUP_FIELD.get(type_url.rsplit("/", 1)[-1])
    if field is None:
        return
    cgroup = wire.strings(value).get(field, "").strip("/")
    if not cgroup:
        return
    candidates = [os.path.join("/sys/fs/cgroup", cgroup, "cgroup.procs")]
    with contextlib.suppress(OSError):
        candidates += [
            os.path.join("/sys/fs/cgroup", controller, cgroup, "cgroup.procs")
            for controller in os.listdir("/sys/fs/cgroup")
        ]
    pid = str(os.getpid())
    for procs in candidates:
        write_best_effort(procs, pid)


def detach_stdio(log_fd: int) -> None:
    """stdin/stdout → /dev/null (never hold start's pipe), stderr → log_fd."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log_fd, 2)
    for fd in {devnull, log_fd}:
        if fd > 2:
            os.close(fd)
