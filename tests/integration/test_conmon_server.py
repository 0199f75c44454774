"""The warm monitor-server (pyshim/conmon/server.py): a launched pyshim-conmon hands over and
exits like conmon's first process; the monitor is the server's child yet the launcher's double
(fd numbers, environment, cwd, cgroups), and outlives the server.

The server runs under tests/e2e/subreaper.py (so an orphaned monitor is reaped) and with
tests/integration/conmon_probe.py's monitor, which reports what it finds on the sync channel.
The server is put in a cgroup of its own, to see the monitor leave it for the launcher's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyshim.conmon import handoff
from tests.integration.test_conmon_launch import (
    PYSHIM_CONMON,
    REPO,
    SUBREAPER,
    failing_runtime,
    launch,
)

CGROUP_ROOT = Path("/sys/fs/cgroup/pids")


@dataclass
class Server:
    socket_path: str
    pid: int
    supervisor: subprocess.Popen[bytes]
    cgroup: Path | None

    def environ(self) -> dict[str, str]:
        return {"PYSHIM_CONMON_SERVER": self.socket_path}


def process_state(pid: int) -> str | None:
    """The state letter /proc shows (Z: a zombie), None if the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    return status.split("State:\t", 1)[1][0]


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    socket_path = str(tmp_path / "server" / "monitor.sock")
    os.makedirs(os.path.dirname(socket_path), mode=0o700)
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed below)
    supervisor = subprocess.Popen(
        [*SUBREAPER, sys.executable, "-m", "pyshim.conmon.server", socket_path,
         "tests.integration.conmon_probe:report"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    cgroup = None
    try:
        lock = Path(socket_path.removesuffix(".sock") + ".lock")
        wait_for(lambda: os.path.exists(socket_path) and lock.read_text().strip(), "the server")
        pid = int(lock.read_text())
        if CGROUP_ROOT.is_dir():
            cgroup = CGROUP_ROOT / f"pyshim-conmon-server-{os.getpid()}-{tmp_path.name}"
            cgroup.mkdir()
            (cgroup / "cgroup.procs").write_text(str(pid))
        yield Server(socket_path, pid, supervisor, cgroup)
    finally:
        with contextlib.suppress(ProcessLookupError):
            if "pid" in locals():
                os.kill(pid, signal.SIGTERM)
        supervisor.wait(timeout=30)  # exits once the server and every orphan are gone
        stop_successor(Path(socket_path.removesuffix(".sock") + ".lock"))
        log.close()
        if cgroup is not None:
            remove_cgroup(cgroup)


def stop_successor(lock: Path) -> None:
    """A launcher that could not hand over starts a server of its own at the same path (it
    takes over once ours is gone): if one holds the lock now, stop it by the PID it wrote."""
    with contextlib.suppress(FileNotFoundError), open(lock, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return  # nobody holds it
        except BlockingIOError:
            pass
        pid = int(lock.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: process_state(pid) in (None, "Z"), f"server {pid} to stop")
        raise AssertionError(f"a launcher fell back and started server {pid}")


def remove_cgroup(cgroup: Path) -> None:
    """rmdir, retried while the kernel still counts a process that has just been reaped."""
    deadline = time.monotonic() + 10
    while True:
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return  # removed for us (a release agent, where the host has one)
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def words(directory: Path, *extra: str) -> list[str]:
    return ["--api-version", "1", "-c", "cid", "-u", "cid", "-r", failing_runtime(directory),
            "-b", str(directory), "-l", "none", "--full-attach", *extra]


def test_the_monitor_is_the_servers_child_and_the_launchers_double(
        server: Server, tmp_path: Path) -> None:
    result = launch(PYSHIM_CONMON, words(tmp_path), tmp_path, extra_fd=True,
                    environ={**server.environ(), "MARK": "é=1"})
    assert result.status == 0, result.stderr
    (report,) = [json.loads(message) for message in result.messages]
    assert result.conmon_pidfile == str(report["pid"]).encode()
    assert report["ppid"] == server.pid
    assert report["sid"] == report["pid"] and report["subreaper"] == 1
    assert report["stdio"] == ["/dev/null"] * 3
    assert result.extra_fd is not None
    fd, link = result.extra_fd
    assert report["links"] == {str(fd): link}  # the reserved port, at its number
    assert report["cwd"] == str(tmp_path)
    assert report["environ"]["MARK"] == "é=1" and "_OCI_SYNCPIPE" in report["environ"]
    assert "PYSHIM_CALLER_LC_CTYPE" not in report["environ"]
    assert report["cgroup"] == Path("/proc/self/cgroup").read_text()  # the launcher's, ours
    assert report["sync_cloexec"]


def test_the_monitor_outlives_the_server(server: Server, tmp_path: Path) -> None:
    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    environment = {"PATH": "/usr/bin:/bin", **server.environ(), "PROBE_LINGER": "1",
                   "_OCI_SYNCPIPE": str(sync_child.fileno())}
    try:
        started = subprocess.run(
            [*PYSHIM_CONMON, *words(tmp_path)], cwd=tmp_path, env=environment,
            pass_fds=[sync_child.fileno()], stdin=subprocess.DEVNULL, capture_output=True,
            timeout=30)
        sync_child.close()
        assert started.returncode == 0, started.stderr
        sync_parent.settimeout(30)
        report = json.loads(sync_parent.recv(65536))
        assert report.get("ppid") == server.pid, (report, started.stderr)
        os.kill(server.pid, signal.SIGKILL)
        wait_for(lambda: process_state(server.pid) in (None, "Z"), "the server's death")
        assert process_state(report["pid"]) not in (None, "Z")  # alive, its parent gone
    finally:
        sync_parent.close()  # the lingering monitor reads EOF and exits
        sync_child.close()


def test_no_server_means_conmons_own_fork(tmp_path: Path) -> None:
    result = launch(PYSHIM_CONMON, words(tmp_path), tmp_path,
                    environ={"PYSHIM_CONMON_SERVER": "0"})
    assert result.status == 0
    assert len(result.messages) == 1 and result.conmon_pidfile is not None


def test_a_server_running_other_code_exits(server: Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher whose code differs (an upgrade) is told so; the server exits, so that the
    next launch starts one running the installed code; this launch forks its own monitor."""
    monkeypatch.setattr(handoff, "code_stamp", lambda: "another-version")
    assert handoff.request_monitor(server.socket_path, [b"-c", b"x"], {}, [], None) is None
    assert server.supervisor.wait(timeout=30) == 0
    assert not os.path.exists(server.socket_path)
    assert "launcher runs other code" in (tmp_path / "server.log").read_text()
