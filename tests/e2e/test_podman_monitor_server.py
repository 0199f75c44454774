"""pyshim's warm monitor-server under podman 4.3: a launch hands over to it (the monitor is the
server's child, the launched process is gone), and a monitor survives the server's death and
podman's exit: its container's exit still reaches podman. After the server died, the next
launch works (it starts a new server and forks its own monitor meanwhile).
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import require_e2e
from tests.e2e.podman import MONITOR_PATHS, PrivatePodman

BUSYBOX = "/bin/busybox"
SERVER_MODULE = "pyshim.conmon.server"


@pytest.fixture
def podman() -> Iterator[PrivatePodman]:
    require_e2e(("podman", "runc"), (BUSYBOX, str(MONITOR_PATHS["pyshim"])))
    instance = PrivatePodman(Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")),
                             MONITOR_PATHS["pyshim"])
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def is_server(process: psutil.Process) -> bool:
    try:
        return any(SERVER_MODULE in word for word in process.cmdline())
    except psutil.NoSuchProcess:
        return False


def monitor_of(podman: PrivatePodman, container: str) -> psutil.Process:
    return psutil.Process(int(podman.state(container)["ConmonPid"]))


def server_listening(podman: PrivatePodman) -> bool:
    """This podman's server accepts connections (the socket of a dead one refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(podman.monitor_server_socket))
        except OSError:
            return False
    return True


def test_a_monitor_from_the_server_outlives_it(podman: PrivatePodman) -> None:
    # The first launch finds no server (each private podman has its own socket): it starts
    # one and forks its own monitor; from then on launches hand over.
    podman.run("run", "--rm", *podman.container_args(), "/bin/true", check=True)
    podman.wait_until(lambda: server_listening(podman), what="a monitor-server listens")
    container = podman.detached("/bin/sleep", "600")
    monitor = monitor_of(podman, container)
    server = psutil.Process(monitor.ppid())
    assert is_server(server)  # forked by the server: the launch handed over
    assert monitor.cmdline()[0] == "pyshim-conmon"  # titled as what it is
    assert monitor.status() != psutil.STATUS_ZOMBIE

    os.kill(server.pid, signal.SIGKILL)
    server.wait(30)
    assert monitor.is_running() and monitor.status() != psutil.STATUS_ZOMBIE
    # sleep as PID 1 ignores SIGTERM: podman kills it after the timeout; the monitor sees the
    # exit and writes the exit file podman reads.
    result = podman.run("stop", "-t", "2", container, check=True)
    assert result.stdout.strip() == container
    assert podman.run("wait", container, check=True).stdout.strip() == "137"
    assert podman.state(container)["ExitCode"] == 137
    podman.wait_until(lambda: not monitor.is_running() or
                      monitor.status() == psutil.STATUS_ZOMBIE, what="the monitor exits")

    # The dead server's socket is still there: the next launch copes.
    result = podman.run("run", "--rm", *podman.container_args(), "/bin/sh", "-c", "exit 5")
    assert result.returncode == 5
