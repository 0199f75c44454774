"""The fork-server's files on a real directory: the lock names its owner (and a lock file
removed under a waiting server is not trusted), a server's own exit removes its set, and only
dead, old sets are removed as stale (a held lock or a fresh file keeps a set)."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from pyshim.ops import forkservers
from pyshim.shim import forkserver_files as files


def make_set(directory: Path, name: str, *, age: float = 3600.0) -> str:
    """A dead server's set (bound-then-abandoned socket, lock, log), `age` seconds old."""
    socket_path = str(directory / f"{name}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(socket_path)
    Path(files.stem(socket_path) + ".lock").write_text("4194999\n/nowhere.sock\nstamp\n")
    Path(files.stem(socket_path) + ".log").write_text("old log\n")
    when = time.time() - age
    for suffix in files.SUFFIXES:
        os.utime(files.stem(socket_path) + suffix, (when, when))
    return socket_path


def present(socket_path: str) -> set[str]:
    base = files.stem(socket_path)
    return {suffix for suffix in files.SUFFIXES if os.path.lexists(base + suffix)}


def test_lock_records_who_holds_it_and_status_reads_it(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "a.sock")
    lock = files.take_lock(socket_path, wait=0)
    assert lock is not None
    try:
        files.write_info(lock, files.ForkServerInfo(os.getpid(), "/run/c.sock", "abc"))
        info = files.read_info(str(tmp_path / "a.lock"))
        assert info is not None and (info.pid, info.address, info.stamp) == (
            os.getpid(), "/run/c.sock", "abc")
        assert files.lock_held(str(tmp_path / "a.lock"))
        assert files.take_lock(socket_path, wait=0) is None  # held: nobody else gets it
        # Held, so one lives; but our command line does not name the socket: its pid is not
        # trusted (stop would not signal it).
        [server] = forkservers.list_servers(str(tmp_path))
        assert (server.state, server.pid, server.address) == ("serving", 0, "/run/c.sock")
    finally:
        os.close(lock)
    assert not files.lock_held(str(tmp_path / "a.lock"))
    [server] = forkservers.list_servers(str(tmp_path))
    assert (server.state, server.pid) == ("dead", 0)


def test_a_lock_file_removed_after_it_was_opened_is_not_trusted(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "b.sock")
    lock_path = tmp_path / "b.lock"
    old = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(old, fcntl.LOCK_EX)
    os.unlink(lock_path)  # the previous owner removed it while still holding it
    try:
        lock = files.take_lock(socket_path, wait=0)
        assert lock is not None
        assert os.fstat(lock).st_ino == os.stat(lock_path).st_ino != os.fstat(old).st_ino
        os.close(lock)
    finally:
        os.close(old)


def test_own_exit_removes_the_set_or_keeps_the_log_for_a_successor(tmp_path: Path) -> None:
    first = make_set(tmp_path, "first", age=0)
    files.remove_own(first)
    assert present(first) == set()
    second = make_set(tmp_path, "second", age=0)
    files.remove_own(second, keep_log=True)
    assert present(second) == {".log"}


def test_stale_sets_are_removed_but_not_live_fresh_or_our_own(tmp_path: Path) -> None:
    own = make_set(tmp_path, "own")
    dead = make_set(tmp_path, "dead")
    fresh = make_set(tmp_path, "fresh", age=0)  # maybe a server being launched
    held = make_set(tmp_path, "held")
    orphan_log = tmp_path / "orphan.log"  # a set with only its log left
    orphan_log.write_text("x\n")
    os.utime(orphan_log, (time.time() - 3600, time.time() - 3600))
    lock = os.open(files.stem(held) + ".lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        removed = files.remove_stale(str(tmp_path), own)
    finally:
        os.close(lock)
    assert sorted(removed) == sorted([files.stem(dead), str(tmp_path / "orphan")])
    assert present(dead) == set() and not orphan_log.exists()
    for kept in (own, fresh, held):
        assert present(kept) == set(files.SUFFIXES), kept
