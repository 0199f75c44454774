"""A fork-server's files: `<hash>.sock` (its listener), `<hash>.lock` (held while it lives, and
saying who it is: pid, containerd address, code stamp) and `<hash>.log`; their removal when it
exits, and the removal of sets whose server is dead.

Ownership is the lock: whoever holds `<hash>.lock` owns the set, so removing files while
holding it never races with a live server. A new server that opened the lock file before it
was removed notices (the path no longer names the inode it locked) and starts over.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time

log = logging.getLogger("pyshim.forkserver")

SUFFIXES = (".sock", ".lock", ".log")
#: How long a new fork-server waits for a stale one (told to exit) to release the lock.
LOCK_WAIT = 3.0
#: A set whose files changed more recently than this is left alone by the stale-file cleanup:
#: a fork-server being launched opens its log before it takes its lock.
STALE_AGE = 60.0


class ForkServerInfo:
    """What a fork-server wrote in its lock file."""

    __slots__ = ("address", "pid", "stamp")

    def __init__(self, pid: int, address: str, stamp: str) -> None:
        self.pid = pid
        self.address = address
        self.stamp = stamp


def stem(socket_path: str) -> str:
    return socket_path.removesuffix(".sock")


def take_lock(socket_path: str, wait: float = LOCK_WAIT) -> int | None:
    """The lock of the set at `socket_path`, as an fd held for as long as we live; None if
    another server holds it for longer than `wait` seconds."""
    path = stem(socket_path) + ".lock"
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)
            continue
        if _names_inode(path, fd):
            return fd
        os.close(fd)  # locked a file its previous owner removed meanwhile: start over


def _names_inode(path: str, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def write_info(lock_fd: int, info: ForkServerInfo) -> None:
    data = f"{info.pid}\n{info.address}\n{info.stamp}\n".encode()
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, data, 0)


def read_info(lock_path: str) -> ForkServerInfo | None:
    try:
        with open(lock_path, encoding="utf-8") as lock_file:
            pid, address, stamp = [*lock_file.read(4096).split("\n"), "", ""][:3]
        return ForkServerInfo(int(pid), address, stamp)
    except (OSError, ValueError):
        return None


def lock_held(lock_path: str) -> bool:
    """Whether a live fork-server holds this lock (probed without taking it for long)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the shared lock if we got it
    return False


def remove_own(socket_path: str, *, keep_log: bool = False) -> None:
    """At our exit, holding the lock: the log (unless a successor is taking over and appends
    to it), then the socket, the lock file last (while locked: nobody can own it meanwhile)."""
    base = stem(socket_path)
    for suffix in ((".sock", ".lock") if keep_log else (".log", ".sock", ".lock")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + suffix)


def sets_in(directory: str) -> list[str]:
    """The socket path of every set (by stem) in `directory`, whatever files it still has."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stems = {name[: -len(suffix)] for name in names for suffix in SUFFIXES
             if name.endswith(suffix)}
    return [os.path.join(directory, name + ".sock") for name in sorted(stems)]


def remove_stale(directory: str, own_socket: str) -> list[str]:
    """Remove every set in `directory` (but ours) whose server is dead: its lock free (or
    missing) and no file touched for STALE_AGE seconds. Returns the stems removed."""
    removed = []
    now = time.time()
    for socket_path in sets_in(directory):
        if socket_path == own_socket:
            continue
        base = stem(socket_path)
        mtimes = []
        for suffix in SUFFIXES:
            with contextlib.suppress(OSError):
                mtimes.append(os.lstat(base + suffix).st_mtime)
        if not mtimes or now - max(mtimes) < STALE_AGE:
            continue
        lock = take_lock(socket_path, wait=0)
        if lock is None:
            continue  # a live server
        try:
            remove_own(socket_path)
        finally:
            os.close(lock)
        removed.append(base)
    return removed
