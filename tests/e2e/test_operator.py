"""The operator commands end to end (``pyshim ps``, ``inspect``, ``debug``, ``forkserver``)
against a private containerd whose shims and fork-server use a run directory of the test's
own (``PYSHIM_RUN_DIR``), so nothing of other containerds on this host is seen or touched.

* ``ps`` / ``ps --json`` / ``inspect``: running, exited and exec processes in two namespaces,
  and a shim SIGKILLed while containerd was down (its exit record shown, the shim gone); once
  containerd is back and has cleaned up, the dead shim's entry is gone as well.
* ``debug``: the dump is printed, reaches containerd's log (the bundle's ``log`` FIFO), SIGUSR1
  does the same (plus the threads from faulthandler), and the shim keeps serving.
* fork-server: ``forkserver status|stop``; it exits by itself once idle with its containerd
  gone, removing its files; the next one removes a dead server's stale set.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import (
    BUSYBOX,
    PYSHIM_RUNTIME,
    REPO,
    SHIM_BIN_DIR,
    SHIM_TOOLS,
    require_e2e,
    start_shim_containerd,
    wait_for_status,
    wait_until,
)
from tests.e2e.containerd import PrivateContainerd, make_busybox_rootfs

PYSHIM = REPO / "bin" / "pyshim"


class Host:
    """A private containerd with its own pyshim run directory, and `pyshim` run against it."""

    def __init__(self, containerd: PrivateContainerd, run_dir: Path) -> None:
        self.containerd = containerd
        self.run_dir = run_dir
        self.rootfs = make_busybox_rootfs(containerd.base_dir / "rootfs")

    def pyshim(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(PYSHIM), *args], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYSHIM_RUN_DIR": str(self.run_dir)})
        if check:
            assert result.returncode == 0, f"pyshim {args}: {result.stderr}"
        return result

    def ps_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.pyshim("ps", "--json").stdout)
        return data

    def run(self, container_id: str, *argv: str, namespace: str = "default",
            group: str = "") -> None:
        """``ctr run -d``; containers with the same ``group`` share one shim."""
        flags = ["--annotation", f"io.containerd.runc.v2.group={group}"] if group else []
        self.containerd.ctr("run", "-d", "--runtime", PYSHIM_RUNTIME, *flags, "--rootfs",
                            str(self.rootfs), container_id, *argv, namespace=namespace)

    def forkserver_dir(self) -> Path:
        return self.run_dir / "forkserver"


def make_host(env: dict[str, str] | None = None) -> tuple[PrivateContainerd, Path]:
    require_e2e(SHIM_TOOLS, (BUSYBOX, str(SHIM_BIN_DIR / "containerd-shim-pyshim-v1")))
    base = Path(tempfile.mkdtemp(prefix="pyshim-ops-", dir="/tmp"))
    run_dir = base / "run"
    containerd = start_shim_containerd(base, env={"PYSHIM_RUN_DIR": str(run_dir), **(env or {})})
    return containerd, run_dir


@pytest.fixture
def host() -> Iterator[Host]:
    containerd, run_dir = make_host()
    try:
        yield Host(containerd, run_dir)
    finally:
        containerd.stop()


@pytest.fixture
def idle_host() -> Iterator[Host]:
    """Fork-server idle bound of 1 s (it still never exits while containerd answers)."""
    containerd, run_dir = make_host({"PYSHIM_FORKSERVER_IDLE_SECONDS": "1"})
    try:
        yield Host(containerd, run_dir)
    finally:
        containerd.stop()


def containers_by_id(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {container["id"]: container
            for shim in snapshot["shims"] for container in shim["containers"]}


def shim_of(snapshot: dict[str, Any], container_id: str) -> dict[str, Any]:
    shims: list[dict[str, Any]] = [shim for shim in snapshot["shims"]
                                   if container_id in {c["id"] for c in shim["containers"]}]
    assert len(shims) == 1, shims
    return shims[0]


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ---------------------------------------------------------------------------------- ps


def test_ps_and_inspect_show_running_exited_and_killed_shims_in_two_namespaces(
    host: Host,
) -> None:
    containerd = host.containerd
    host.run("web", "/bin/sleep", "1000")
    containerd.ctr("task", "exec", "--detach", "--exec-id", "side", "web", "/bin/sleep", "1000")
    host.run("job", "/bin/sh", "-c", "exit 3")
    host.run("db", "/bin/sleep", "1000", namespace="other")
    # A pod: two containers in one shim.
    host.run("crashy", "/bin/sh", "-c", "exit 7", namespace="other", group="pod")
    host.run("sibling", "/bin/sh", "-c", "exit 8", namespace="other", group="pod")
    wait_for_status(containerd, "job", "STOPPED")
    wait_until(lambda: containerd.ctr("task", "ls", namespace="other").stdout.count("STOPPED")
               == 2, what="crashy and sibling STOPPED")

    snapshot = host.ps_json()
    containers = containers_by_id(snapshot)
    assert set(containers) == {"web", "job", "db", "crashy", "sibling"}
    assert len(snapshot["shims"]) == 4
    assert shim_of(snapshot, "crashy") == shim_of(snapshot, "sibling")
    pod_socket = containerd.shim_socket_path("other", "pod")
    assert shim_of(snapshot, "crashy")["socket"] == f"unix://{pod_socket}"
    web, job, db = containers["web"], containers["job"], containers["db"]
    assert (web["namespace"], web["status"], web["shim_state"]) == ("default", "running",
                                                                    "serving")
    processes = {process["id"]: process for process in web["processes"]}
    assert processes["web"]["kind"] == "init" and processes["side"]["kind"] == "exec"
    assert processes["side"]["status"] == "running" and processes["side"]["pid"] > 0
    assert psutil.Process(processes["web"]["pid"]).cmdline() == ["/bin/sleep", "1000"]
    [job_init] = job["processes"]
    assert (job["status"], job_init["exit_status"]) == ("stopped", 3)
    assert job_init["exited_at"].startswith(time.strftime("%Y-", time.gmtime()))
    assert (db["namespace"], db["status"]) == ("other", "running")
    for shim in snapshot["shims"]:
        assert shim["address"] == str(containerd.address)
        assert shim["state"] == "serving"
        assert psutil.Process(shim["pid"]).is_running()
        assert shim["socket"].startswith("unix:///run/containerd/s/")
    assert [server["state"] for server in snapshot["forkservers"]] == ["serving"]

    # A shim killed while containerd is down: containerd cannot clean up after it, and what
    # its daemon recorded (crashy's exit, 7) is what ps shows.
    crashy_shim = shim_of(snapshot, "crashy")["pid"]
    containerd.stop_daemon()
    os.kill(crashy_shim, signal.SIGKILL)
    wait_until(lambda: pid_gone(crashy_shim), what=f"shim {crashy_shim} dead")
    snapshot = host.ps_json()
    crashy, sibling = (containers_by_id(snapshot)[name] for name in ("crashy", "sibling"))
    assert shim_of(snapshot, "crashy")["state"] == "gone"
    assert shim_of(snapshot, "crashy") == shim_of(snapshot, "sibling")
    for container, status in ((crashy, 7), (sibling, 8)):
        assert container["status"] == "stopped (shim gone)"
        [init] = container["processes"]
        assert (init["exit_status"], container["namespace"]) == (status, "other")
        assert init["exited_at_ns"] > 0 and init["pid"] > 0
    assert containers_by_id(snapshot)["web"]["status"] == "running"  # without containerd

    table = host.pyshim("ps").stdout
    rows = {tuple(line.split()[:3]) for line in table.splitlines()}
    assert ("web", "init", "default") in rows and ("web", "side", "default") in rows
    assert re.search(r"^crashy\s+init\s+other\s+\d+\s+\d+\s+stopped \(shim gone\)\s+7\s",
                     table, re.MULTILINE), table
    assert re.search(r"^job\s+init\s+default\s+\d+\s+\d+\s+stopped\s+3\s", table,
                     re.MULTILINE), table
    only_other = json.loads(host.pyshim("ps", "--json", "--namespace", "other").stdout)
    assert set(containers_by_id(only_other)) == {"db", "crashy", "sibling"}

    inspected = json.loads(host.pyshim("inspect", "crashy", "--json").stdout)
    assert inspected["shim"]["state"] == "gone" and inspected["shim"]["pid"] == crashy_shim
    assert inspected["bundle"].endswith("/other/crashy")
    readable = host.pyshim("inspect", "web").stdout
    assert "status      running" in readable and "exec side: pid" in readable
    missing = host.pyshim("inspect", "nothing-here", check=False)
    assert missing.returncode == 1 and "no container 'nothing-here'" in missing.stderr

    # containerd back: it cleans up after the dead shim (bundle removed), and ps with it.
    containerd.start()
    wait_until(lambda: not {"crashy", "sibling"} & set(containers_by_id(host.ps_json())),
               what="the dead shim's container gone from ps after containerd cleaned up")
    assert not any(path.name.endswith(".json") and json.loads(path.read_text())["pid"]
                   == crashy_shim for path in (host.run_dir / "shims").iterdir())


# ------------------------------------------------------------------------------- debug


def test_debug_dump_reaches_the_log_and_the_shim_keeps_serving(host: Host) -> None:
    containerd = host.containerd
    host.run("stuck", "/bin/sleep", "1000")
    shim = shim_of(host.ps_json(), "stuck")["pid"]

    printed = host.pyshim("debug", "stuck").stdout
    assert printed.startswith("=== pyshim debug dump: requested over Introspect")
    assert f"pid {shim}" in printed.splitlines()[0]
    assert "--- task 'exit container stuck' (pending): waits for" in printed
    assert "--- thread MainThread" in printed
    end = f"=== end of pyshim debug dump (pid {shim}) ==="
    assert printed.rstrip().endswith(end)

    def log() -> str:
        return containerd.log_path.read_text(errors="replace")

    wait_until(lambda: end in log(), what="the dump in containerd's log")

    signalled = host.pyshim("debug", "--signal", "stuck").stdout
    assert f"sent SIGUSR1 to shim {shim}" in signalled
    wait_until(lambda: "pyshim debug dump: on SIGUSR1" in log(), what="the SIGUSR1 dump")
    wait_until(lambda: log().count(end) == 2, what="the SIGUSR1 dump complete")
    assert "most recent call first" in log()  # faulthandler's thread stacks

    # Not stopped: still the same shim, still serving.
    assert not pid_gone(shim)
    result = containerd.ctr("task", "exec", "--exec-id", "after", "stuck", "/bin/true",
                            check=False)
    assert result.returncode == 0, result.stderr
    assert shim_of(host.ps_json(), "stuck")["state"] == "serving"

    # A shim that does not answer at all (stopped here): ps says so; debug falls back to the
    # signal, which it handles as soon as it runs again.
    os.kill(shim, signal.SIGSTOP)
    try:
        frozen = shim_of(host.ps_json(), "stuck")
        assert (frozen["state"], frozen["pid"]) == ("not answering", shim)
        assert frozen["containers"][0]["status"] == "unknown (shim not answering)"
        fallback = host.pyshim("debug", "stuck")
        assert f"shim {shim} does not answer" in fallback.stderr
        assert f"sent SIGUSR1 to shim {shim}" in fallback.stdout
    finally:
        os.kill(shim, signal.SIGCONT)
    wait_until(lambda: log().count("pyshim debug dump: on SIGUSR1") == 2 and log().count(end)
               == 3, what="the SIGUSR1 dump of the shim once it runs again")
    assert shim_of(host.ps_json(), "stuck")["state"] == "serving"


# ------------------------------------------------------------------------ fork-server


def test_forkserver_status_and_stop(host: Host) -> None:
    containerd = host.containerd
    host.run("first", "/bin/sleep", "1000")
    [server] = json.loads(host.pyshim("forkserver", "status", "--json").stdout)
    assert (server["state"], server["address"]) == ("serving", str(containerd.address))
    assert psutil.Process(server["pid"]).is_running()
    files = {Path(path).suffix for path in server["files"]}
    assert files == {".sock", ".lock", ".log"}
    assert f"{server['pid']}  serving" in host.pyshim("forkserver", "status").stdout

    stopped = host.pyshim("forkserver", "stop", "--address", str(containerd.address)).stdout
    assert f"stopped fork-server {server['pid']}" in stopped
    wait_until(lambda: pid_gone(server["pid"]), what="fork-server exited")
    assert list(host.forkserver_dir().iterdir()) == []
    assert host.pyshim("forkserver", "status").stdout.strip() == "no fork-servers"

    # Its daemon is on its own: still serving; the next start launches a new fork-server.
    assert shim_of(host.ps_json(), "first")["state"] == "serving"
    host.run("second", "/bin/sleep", "1000")
    [new] = json.loads(host.pyshim("forkserver", "status", "--json").stdout)
    assert new["state"] == "serving" and new["pid"] != server["pid"]


def test_forkserver_exits_when_idle_and_its_containerd_is_gone(idle_host: Host) -> None:
    host = idle_host
    host.run("short", "/bin/true")
    [server] = json.loads(host.pyshim("forkserver", "status", "--json").stdout)
    pid = server["pid"]
    # While containerd answers it stays, however idle: it serves the next start.
    host.run("again", "/bin/true")
    assert json.loads(host.pyshim("forkserver", "status", "--json").stdout)[0]["pid"] == pid

    host.containerd.stop_daemon()
    wait_until(lambda: pid_gone(pid), what=f"idle fork-server {pid} exits")
    wait_until(lambda: list(host.forkserver_dir().iterdir()) == [],
               what="its .sock, .lock and .log removed")


def test_next_forkserver_removes_the_stale_files_of_dead_ones(host: Host) -> None:
    directory = host.forkserver_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A dead server's set: a bound (then abandoned) socket, its lock, its log; old.
    stale = directory / "0123456789abcdef0123456789abcdef"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as dead:
        dead.bind(str(stale) + ".sock")
    Path(str(stale) + ".lock").write_text("999999\n/nowhere/containerd.sock\nold\n")
    Path(str(stale) + ".log").write_text("a dead fork-server's log\n")
    # A set whose lock is held (by this test: a live server as far as anyone can tell).
    held = directory / "fedcba9876543210fedcba9876543210"
    Path(str(held) + ".log").write_text("busy\n")
    old = time.time() - 3600
    for path in [*directory.iterdir()]:
        os.utime(path, (old, old))
    lock_fd = os.open(str(held) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.utime(str(held) + ".lock", (old, old))
        statuses = {Path(s["socket"]).stem: s["state"] for s in
                    json.loads(host.pyshim("forkserver", "status", "--json").stdout)}
        assert statuses[stale.name] == "dead"

        host.run("trigger", "/bin/true")  # launches this containerd's fork-server
        wait_until(lambda: not any(directory.glob(stale.name + ".*")),
                   what="the stale set removed by the new fork-server")
        assert {path.name for path in directory.glob(held.name + ".*")} == {
            held.name + ".lock", held.name + ".log"}
        [log] = [path for path in directory.glob("*.log") if path.stem != held.name]
        assert f"removed the files of a dead fork-server: {stale}" in log.read_text()
    finally:
        os.close(lock_fd)
