"""pyshim's warm fork-server (``pyshim/shim/forkserver.py``, ``forkclient.py``), end to end under
a private containerd, with ``ctr`` and busybox containers:

* The first container's ``start`` launches the fork-server and waits for it; every daemon,
  the first one included, is forked by it: its children, each in a session of its own,
  showing a shim's command line. Its socket is 0600 in a 0700 directory, both root's.
* SIGKILLed, the daemons it forked keep serving (re-parented to the subreaper); the next
  ``start`` finds nobody listening and launches a new fork-server, which forks its daemon.
* Upgrade: on a copy of the installed code, changed under a running fork-server, the next
  ``start`` makes the old fork-server exit and a new one (with the new code) take over and
  fork its daemon; daemons from then on run the new code (they leave a mark), the old ones
  keep working.
* Other users: the file modes keep them out, and with the modes opened up the fork-server
  itself refuses them (``SO_PEERCRED``): no reply, no daemon.
* ``PYSHIM_FORKSERVER=0`` in containerd's environment: no fork-server is ever started.

The fork-server is found as the subreaper's child running
:data:`~tests.e2e.conftest.FORKSERVER_MARKER`, and processes are only signalled by PID.
"""

from __future__ import annotations

import json
import marshal
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pyshim.shim import forkclient
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    REPO,
    SHIM_TOOLS,
    assert_no_leftovers,
    forkserver_env,
    forkserver_files,
    forkserver_log,
    forkserver_problems,
    forkserver_processes,
    forkserver_socket,
    forkserver_stamp,
    remove_container,
    require_e2e,
    shim_processes,
    start_shim_containerd,
    task_list,
    unique_id,
    wait_for_forkserver,
    wait_for_status,
    wait_until,
    warm_up_forkserver,
)
from tests.e2e.containerd import (
    PrivateContainerd,
    bound_unix_socket_paths,
    make_busybox_rootfs,
)

SHIM_NAME = "containerd-shim-pyshim-v1"


# ------------------------------------------------------------------------------- helpers


def run_sleeper(containerd: PrivateContainerd, rootfs: Path, container_id: str) -> None:
    """``ctr run -d`` a pyshim container running ``sleep 1000``."""
    containerd.ctr("run", "-d", "--runtime", PYSHIM_RUNTIME, "--rootfs", str(rootfs),
                   container_id, "/bin/sleep", "1000")
    assert task_list(containerd)[container_id][1] == "RUNNING"


def shim_of(containerd: PrivateContainerd, container_id: str) -> psutil.Process:
    """The one shim daemon serving ``container_id``."""
    shims = shim_processes(containerd, container_id)
    assert len(shims) == 1, f"shims of {container_id}: {[(p.pid, p.cmdline()) for p in shims]}"
    return shims[0]


def command_line(pid: int) -> str:
    """/proc/PID/cmdline, arguments joined by spaces (a fork-server's daemon writes its title
    over its argv area, padded with NULs)."""
    return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ").split())


def exec_true(containerd: PrivateContainerd, container_id: str) -> None:
    """``ctr task exec ... /bin/true`` succeeds (exit status 0): the shim serves."""
    result = containerd.ctr("task", "exec", "--exec-id", unique_id("true"), container_id,
                            "/bin/true", check=False)
    assert result.returncode == 0, f"exec in {container_id}: {result.stderr}"


def kill_and_delete(containerd: PrivateContainerd, container_id: str) -> None:
    """SIGKILL the task; its shim reports the exit (STOPPED, status 137); delete it all."""
    containerd.ctr("task", "kill", "--signal", "SIGKILL", container_id)
    wait_for_status(containerd, container_id, "STOPPED")
    assert "exit code 137" in containerd.ctr("task", "delete", container_id).stderr
    containerd.ctr("container", "rm", container_id)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def child_pids(process: psutil.Process) -> set[int]:
    return {child.pid for child in process.children() if not gone(child)}


def listens_on(process: psutil.Process, path: Path) -> bool:
    """Whether ``process`` has a unix socket bound to ``path`` (the fork-server's listener)."""
    # psutil types laddr as an (ip, port) pair; for a unix socket it is the path.
    return str(path) in {str(connection.laddr) for connection in process.net_connections("unix")}


def logged(containerd: PrivateContainerd, pid: int, message: str) -> bool:
    """Whether fork-server (or fork-server child) ``pid`` logged exactly ``message``."""
    pattern = rf"^.* forkserver\[{pid}\] \w+ {re.escape(message)}$"
    return re.search(pattern, forkserver_log(containerd), re.MULTILINE) is not None


# ---------------------------------------------------------------------------------- tests


def test_later_containers_get_daemons_forked_by_the_forkserver(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    containerd = shim_containerd
    first, second = unique_id("first"), unique_id("second")
    try:
        assert forkserver_processes(containerd) == []
        run_sleeper(containerd, busybox_rootfs, first)
        # The first start launched the fork-server (serving the installed code, an orphan
        # re-parented to the subreaper) and waited for it to fork the daemon.
        server = wait_for_forkserver(containerd, stamp=forkclient.code_stamp())
        assert shim_of(containerd, first).ppid() == server.pid
        assert server.ppid() == containerd.subreaper_pid
        assert os.getsid(server.pid) == server.pid
        assert str(forkserver_socket(containerd)) in server.cmdline()

        run_sleeper(containerd, busybox_rootfs, second)
        daemon = shim_of(containerd, second)
        assert daemon.ppid() == server.pid
        assert os.getsid(daemon.pid) == daemon.pid
        title = command_line(daemon.pid)
        full = f"{SHIM_NAME} -namespace default -id {second} -address {containerd.address}"
        assert title.split()[:5] == full.split()[:5], title
        assert full.startswith(title), title  # cut to fit its argv area at most
        exec_true(containerd, second)

        socket_path = forkserver_socket(containerd)
        assert socket_path.parent == Path(forkclient.FORKSERVER_DIR)
        socket_stat = os.stat(socket_path)
        assert stat.S_ISSOCK(socket_stat.st_mode)
        assert (stat.S_IMODE(socket_stat.st_mode), socket_stat.st_uid) == (0o600, 0)
        dir_stat = os.stat(socket_path.parent)
        assert stat.S_ISDIR(dir_stat.st_mode)
        assert (stat.S_IMODE(dir_stat.st_mode), dir_stat.st_uid) == (0o700, 0)
        for path in forkserver_files(containerd).values():
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path

        for container_id in (first, second):
            kill_and_delete(containerd, container_id)
    finally:
        for container_id in (first, second):
            remove_container(containerd, container_id)
    assert_no_leftovers(containerd, [first, second])
    # It holds no container's state: it outlives them, and still serves.
    assert forkserver_problems(containerd, server) == []


def test_daemons_outlive_a_killed_forkserver_and_the_next_start_launches_a_new_one(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    containerd = shim_containerd
    ids = [unique_id(f"kill{index}") for index in range(4)]
    first, second, third, fourth = ids
    socket_path = forkserver_socket(containerd)
    try:
        run_sleeper(containerd, busybox_rootfs, first)
        old = wait_for_forkserver(containerd)
        run_sleeper(containerd, busybox_rootfs, second)
        orphan = shim_of(containerd, second)
        assert orphan.ppid() == old.pid
        assert listens_on(old, socket_path)

        old.send_signal(signal.SIGKILL)  # psutil: by PID, checked to be the same process
        wait_until(lambda: gone(old), what=f"fork-server {old.pid} dead")
        wait_until(lambda: orphan.ppid() == containerd.subreaper_pid,
                   what=f"daemon {orphan.pid} re-parented to the subreaper")
        # Its socket file stays behind, with nobody listening on it.
        assert socket_path.exists()
        assert str(socket_path) not in bound_unix_socket_paths()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe, \
                pytest.raises(ConnectionRefusedError):
            probe.connect(str(socket_path))

        # Both daemons (forked by the dead fork-server) keep serving.
        for container_id in (first, second):
            exec_true(containerd, container_id)
        tasks = task_list(containerd)
        assert {tasks[first][1], tasks[second][1]} == {"RUNNING"}, tasks

        # The next start finds nobody listening: it launches a new fork-server, whose
        # children its daemon and the later ones are.
        run_sleeper(containerd, busybox_rootfs, third)
        new = wait_for_forkserver(containerd, replacing=old.pid)
        assert shim_of(containerd, third).ppid() == new.pid
        assert new.pid != old.pid
        assert listens_on(new, socket_path)
        run_sleeper(containerd, busybox_rootfs, fourth)
        assert shim_of(containerd, fourth).ppid() == new.pid
        exec_true(containerd, fourth)

        # The old containers' exits are still seen (kill, wait, delete).
        for container_id in ids:
            kill_and_delete(containerd, container_id)
    finally:
        for container_id in ids:
            remove_container(containerd, container_id)
    assert_no_leftovers(containerd, ids)
    assert forkserver_problems(containerd, new) == []


# ---------------------------------------------------------------------------------- upgrade

#: Appended to the copy's pyshim/shim/daemon.py: every daemon that runs this code writes its
#: pid to ``<marks>/<container id>`` before serving (``become_daemon`` looks ``serve`` up when
#: it is called, in the fork-server's children as in the daemons ``start`` forks).
UPGRADE = """

# Appended by tests/e2e/test_forkserver.py (the upgrade test).
def _upgraded_serve(config, listener, _serve=serve):
    import os as _os

    with open(_os.path.join({marks!r}, config.id), "w") as _mark:
        _mark.write(str(_os.getpid()))
    return _serve(config, listener)


serve = _upgraded_serve
"""


@pytest.fixture
def installed_copy() -> Iterator[Path]:
    """A copy of the installed shim that a test may change: the repo's ``pyshim/`` and
    ``bin/``, and ``.venv`` as a symlink to the repo's (``bin/containerd-shim-pyshim-v1`` runs
    ``<its root>/.venv/bin/python`` with ``<its root>`` and the venv's site-packages first on
    sys.path). Removed after the test (whose containerd must be stopped first)."""
    venv = REPO / ".venv"
    require_e2e(SHIM_TOOLS, (str(venv / "bin" / "python"),))
    root = Path(tempfile.mkdtemp(prefix="pyshim-e2e-copy-", dir="/tmp")).resolve()
    try:
        shutil.copytree(REPO / "pyshim", root / "pyshim",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "bin", root / "bin")
        (root / ".venv").symlink_to(venv)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def copy_containerd(installed_copy: Path) -> Iterator[PrivateContainerd]:
    """A private containerd that runs the copy's shim (its bin first on PATH), fork-server on."""
    containerd = start_shim_containerd(
        env=forkserver_env(True), bin_dir=installed_copy / "bin"
    )
    try:
        yield containerd
    finally:
        containerd.stop()


def test_upgrade_replaces_the_forkserver_and_later_daemons_run_the_new_code(
    installed_copy: Path, copy_containerd: PrivateContainerd
) -> None:
    containerd = copy_containerd
    rootfs = make_busybox_rootfs(containerd.base_dir / "rootfs")
    marks = installed_copy / "marks"
    marks.mkdir()
    package = installed_copy / "pyshim"
    old_stamp = forkclient.code_stamp(str(package))
    ids = [unique_id(f"upgrade{index}") for index in range(4)]
    first, second, third, fourth = ids
    try:
        run_sleeper(containerd, rootfs, first)
        old = wait_for_forkserver(containerd, stamp=old_stamp)
        assert str(installed_copy) in " ".join(old.cmdline())  # it runs the copy
        run_sleeper(containerd, rootfs, second)
        old_daemons = {cid: shim_of(containerd, cid) for cid in (first, second)}
        assert old_daemons[second].ppid() == old.pid

        # Upgrade the installed code under the running fork-server.
        with open(package / "shim" / "daemon.py", "a") as daemon_module:
            daemon_module.write(UPGRADE.format(marks=str(marks)))
        new_stamp = forkclient.code_stamp(str(package))
        assert new_stamp != old_stamp

        # The next start: the old fork-server's child finds the stamp differs, the old
        # fork-server exits, start launches a new one, which forks its daemon (new code).
        run_sleeper(containerd, rootfs, third)
        wait_until(lambda: gone(old), what=f"old fork-server {old.pid} exits")
        assert logged(containerd, old.pid, "exiting"), forkserver_log(containerd)
        new = wait_for_forkserver(containerd, stamp=new_stamp, replacing=old.pid)
        assert forkserver_stamp(containerd, new.pid) == new_stamp
        assert str(installed_copy) in " ".join(new.cmdline())
        third_daemon = shim_of(containerd, third)
        assert third_daemon.ppid() == new.pid

        # A container after that: a daemon forked by the new fork-server, running the new
        # code (so was the third one's).
        run_sleeper(containerd, rootfs, fourth)
        fourth_daemon = shim_of(containerd, fourth)
        assert fourth_daemon.ppid() == new.pid
        marked = {path.name: path.read_text() for path in marks.iterdir()}
        assert marked == {third: str(third_daemon.pid), fourth: str(fourth_daemon.pid)}

        # The old containers still work, served by their old daemons.
        for container_id, daemon in old_daemons.items():
            assert shim_of(containerd, container_id).pid == daemon.pid
            exec_true(containerd, container_id)
        for container_id in ids:
            kill_and_delete(containerd, container_id)
    finally:
        for container_id in ids:
            remove_container(containerd, container_id)
    assert_no_leftovers(containerd, ids)
    assert forkserver_problems(containerd, new) == []


# ------------------------------------------------------------------------------ other users

#: A user (and group) that is not root: nobody/nogroup.
OTHER_UID = OTHER_GID = 65534
#: The interpreter that user runs: the system's (the venv's may live below a 0700 /root).
OTHER_PYTHON = "/usr/bin/python3"

#: Run as the other user: connect to argv[1]; with a request (argv[2], hex), send it as a start
#: would (with a listening socket, abstract name argv[3], and a log fd) and read the reply.
#: Prints what happened as JSON.
CONNECT_AS_OTHER_USER = r"""
import json, os, socket, sys

path, request, name = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
result = {"pid": os.getpid(), "uid": os.getuid()}
connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
connection.settimeout(10)
try:
    connection.connect(path)
except OSError as error:
    result["connect"] = type(error).__name__
else:
    result["connect"] = "connected"
    if request:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + name)
        listener.listen()
        log = os.open(os.devnull, os.O_WRONLY)
        try:
            socket.send_fds(connection, [request], [listener.fileno(), log])
            result["sent"] = "sent"
        except OSError as error:
            result["sent"] = type(error).__name__
        try:
            result["reply"] = connection.recv(65536).decode(errors="replace")
        except OSError as error:
            result["reply"] = type(error).__name__
print(json.dumps(result))
"""


def connect_as_other_user(path: Path, request: bytes = b"", name: str = "") -> dict[str, Any]:
    result = subprocess.run(
        [OTHER_PYTHON, "-I", "-S", "-c", CONNECT_AS_OTHER_USER, str(path), request.hex(), name],
        user=OTHER_UID, group=OTHER_GID, extra_groups=[], cwd="/",
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout)
    assert outcome["uid"] == OTHER_UID
    return outcome


def test_other_users_cannot_use_the_forkserver(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    require_e2e(SHIM_TOOLS, (OTHER_PYTHON,))
    containerd = shim_containerd
    server = warm_up_forkserver(containerd, busybox_rootfs)
    socket_path = forkserver_socket(containerd)
    directory = socket_path.parent
    intruder = unique_id("intruder")
    bundle = containerd.base_dir / intruder
    bundle.mkdir()
    # What a start would send (forkclient.request_daemon: marshal, made by the fork-server's
    # Python; the right stamp, a complete config): only the uid is wrong.
    request = marshal.dumps({
        "stamp": forkserver_stamp(containerd, server.pid),
        "config": {
            "namespace": "default", "id": intruder, "address": str(containerd.address),
            "ttrpc_address": str(containerd.ttrpc_address), "bundle": str(bundle),
            "socket_path": str(bundle / "shim.sock"), "debug": False, "publish_binary": "",
            "options": ("", b""),
        },
        "environment": {"PATH": "/usr/bin:/bin"},
        "oom_score_adj": None,
    })
    # As installed (directory 0700, socket 0600), other users cannot even connect ...
    assert connect_as_other_user(socket_path)["connect"] == "PermissionError"
    modes = {path: stat.S_IMODE(os.stat(path).st_mode)
             for path in (directory.parent, directory, socket_path)}
    try:
        # ... nor with the directory open: the socket's mode alone keeps them out too.
        os.chmod(directory.parent, modes[directory.parent] | 0o001)
        os.chmod(directory, 0o755)
        assert connect_as_other_user(socket_path)["connect"] == "PermissionError"
        # With the socket open as well, the fork-server's own check (SO_PEERCRED) refuses.
        os.chmod(socket_path, 0o666)
        children = child_pids(server)
        outcome = connect_as_other_user(socket_path, request, unique_id("pyshim-e2e-intruder"))
    finally:
        for path, mode in reversed(modes.items()):
            if path.exists():
                os.chmod(path, mode)
    assert outcome["connect"] == "connected", outcome
    # Closed without a reply (EOF, or a reset as the request was left unread): no daemon pid.
    assert outcome["reply"] in ("", "ConnectionResetError"), outcome
    # Logged by the child the fork-server forked for the connection.
    refusal = rf"^.* forkserver\[\d+\] WARNING refused a request from pid {outcome['pid']} "
    refusal += rf"\(uid {OTHER_UID}\)$"
    assert re.search(refusal, forkserver_log(containerd), re.MULTILINE), forkserver_log(containerd)
    wait_until(lambda: child_pids(server) == children, 10,
               f"fork-server {server.pid} back to its children {children}")
    assert shim_processes(containerd, intruder) == []
    assert not (bundle / "shim.sock.lock").exists()

    # It goes on serving root's starts.
    assert [p.pid for p in forkserver_processes(containerd)] == [server.pid]
    after = unique_id("after")
    try:
        run_sleeper(containerd, busybox_rootfs, after)
        assert shim_of(containerd, after).ppid() == server.pid
        kill_and_delete(containerd, after)
    finally:
        remove_container(containerd, after)
    assert_no_leftovers(containerd, [after])


# ---------------------------------------------------------------------------------- disabled


@pytest.mark.parametrize("forkserver", [pytest.param(False, id="forkserver-off")],
                         indirect=True)
def test_forkserver_off_is_never_started(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    containerd = shim_containerd
    variable = forkclient.ENABLE_VARIABLE
    assert psutil.Process(containerd.pid).environ().get(variable) == "0"
    ids = [unique_id(f"off{index}") for index in range(3)]
    try:
        result = containerd.ctr("run", "--rm", "--runtime", PYSHIM_RUNTIME, "--rootfs",
                                str(busybox_rootfs), ids[0], "/bin/echo", "hello")
        assert result.stdout == "hello\n"
        for container_id in ids[1:]:
            run_sleeper(containerd, busybox_rootfs, container_id)
        for container_id in ids[1:]:
            daemon = shim_of(containerd, container_id)
            # Forked by its own start (re-parented to the subreaper), with containerd's
            # environment.
            assert daemon.ppid() == containerd.subreaper_pid
            assert daemon.environ().get(variable) == "0"
            exec_true(containerd, container_id)
        assert forkserver_problems(containerd, None) == []
        socket_path = str(forkserver_socket(containerd))
        anywhere = [p.pid for p in psutil.process_iter(["cmdline"])
                    if socket_path in " ".join(p.info["cmdline"] or ())]
        assert anywhere == []
        for container_id in ids[1:]:
            kill_and_delete(containerd, container_id)
    finally:
        for container_id in ids:
            remove_container(containerd, container_id)
    assert_no_leftovers(containerd, ids)
    assert forkserver_problems(containerd, None) == []
