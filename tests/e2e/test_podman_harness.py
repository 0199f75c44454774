"""Tests of the podman harness itself (tests/e2e/podman.py, spawning.py, spawner.py).

With the real conmon: podman uses the private config and storage, the monitors are reaped
below the harness's child subreaper, and :meth:`PrivatePodman.stop` leaves no process, mount,
runc state, cgroup or directory behind, even with containers still running and a monitor
killed under one of them.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import require_e2e
from tests.e2e.containerd import cgroup_hierarchies, mounts_under
from tests.e2e.podman import (
    CGROUP_PARENT,
    DEPLOY_CONTAINERS_CONF,
    MAX_RUNROOT,
    PODMAN_RUNC_ROOT,
    PYSHIM_CONMON,
    REAL_CONMON,
    PrivatePodman,
    toml_text,
)

BUSYBOX = "/bin/busybox"


@pytest.fixture
def podman() -> Iterator[PrivatePodman]:
    require_e2e(("podman", "runc"), (BUSYBOX, str(REAL_CONMON)))
    instance = PrivatePodman(Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")), REAL_CONMON)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def test_deployed_snippet_names_pyshim_and_the_test_config_starts_from_it() -> None:
    deployed = tomllib.loads(DEPLOY_CONTAINERS_CONF.read_text())
    (path,) = deployed["engine"]["conmon_path"]
    assert Path(path).name == PYSHIM_CONMON.name
    instance = PrivatePodman(Path("/tmp/pm-unused"), PYSHIM_CONMON)
    written = tomllib.loads(toml_text(instance.containers_conf()))
    assert written["engine"]["conmon_path"] == [str(PYSHIM_CONMON)]
    for table, keys in deployed.items():
        assert set(keys) <= set(written[table])


def test_runroot_must_be_short() -> None:
    with pytest.raises(ValueError, match="runroot"):
        PrivatePodman(Path("/tmp/" + "x" * MAX_RUNROOT), REAL_CONMON)


def test_podman_uses_the_private_config_and_storage(podman: PrivatePodman) -> None:
    info = json.loads(podman.run("info", "--format", "json", check=True).stdout)
    assert info["store"]["graphRoot"] == str(podman.graphroot)
    assert info["store"]["runRoot"] == str(podman.runroot)
    assert info["host"]["conmon"]["path"] == str(REAL_CONMON)
    assert info["host"]["cgroupManager"] == "cgroupfs"
    assert info["host"]["eventLogger"] == "file"
    assert info["host"]["ociRuntime"]["name"] == "runc"
    container = podman.run("run", "-d", *podman.container_args(), "/bin/sh", "-c",
                           "ulimit -n; ulimit -u; sleep 1000", check=True).stdout.strip()
    assert podman.bundle(container).is_dir()
    assert (podman.runroot / "overlay-containers" / container / "userdata" / "pidfile").exists()
    inspected = podman.inspect(container)
    for key in ("StaticDir", "OCIConfigPath", "ConmonPidFile", "PidFile", "HostsPath"):
        assert inspected[key].startswith(f"{podman.base_dir}/"), (key, inspected[key])
    assert any((podman.tmp_dir / "locks").iterdir())  # file locks, not /dev/shm/libpod_lock
    podman.wait_until(lambda: podman.run("logs", container).stdout == "20000\n32768\n",
                      what="the container's ulimits logged")
    assert container in podman.events_log.read_text()


def test_monitors_are_reaped_below_the_subreaper(podman: PrivatePodman) -> None:
    container = podman.run("run", "-d", *podman.container_args(), "/bin/sleep", "1000",
                           check=True).stdout.strip()
    monitor = psutil.Process(podman.state(container)["ConmonPid"])
    assert monitor.ppid() == podman.spawner.subreaper_pid  # the double fork's orphan
    monitor.send_signal(signal.SIGKILL)
    monitor.wait(30)  # reaped (psutil would time out on a zombie)
    podman.wait_until(lambda: not psutil.pid_exists(monitor.pid), what="monitor reaped")


@pytest.mark.parametrize("podman_rm", [True, False], ids=["podman-rm", "by-pid-only"])
def test_stop_leaves_nothing_behind(podman_rm: bool) -> None:
    """Also when podman is not asked to remove the containers first (a broken monitor may
    leave podman unable to): then processes are killed by PID, runc state deleted, the
    containers' /dev/shm unmounted and their cgroups removed by the harness itself."""
    require_e2e(("podman", "runc"), (BUSYBOX, str(REAL_CONMON)))
    podman = PrivatePodman(Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")), REAL_CONMON)
    try:
        podman.start()
        args = podman.container_args()
        running = podman.run("run", "-d", *args, "/bin/sleep", "1000", check=True)
        orphaned = podman.run("run", "-d", *args, "/bin/sleep", "1000", check=True)
        exited = podman.run("run", "-d", *args, "/bin/true", check=True)
        containers = [r.stdout.strip() for r in (running, orphaned, exited)]
        podman.run("wait", containers[2], check=True)
        killed_monitor = psutil.Process(podman.state(containers[1])["ConmonPid"])
        killed_monitor.send_signal(signal.SIGKILL)
        killed_monitor.wait(30)
        processes = [psutil.Process(podman.spawner.subreaper_pid), *podman.spawner.descendants()]
        assert len(processes) >= 5  # subreaper, spawner, 1 monitor, 2 containers
        assert mounts_under(podman.base_dir)  # the running containers' /dev/shm
        cgroups = [hierarchy / CGROUP_PARENT / f"libpod-{container}"
                   for hierarchy in cgroup_hierarchies() for container in containers[:2]]
        assert any(path.exists() for path in cgroups)
    finally:
        podman.stop(podman_rm=podman_rm)
    assert not [process for process in processes if process.is_running()
                and process.status() != psutil.STATUS_ZOMBIE]
    assert not mounts_under(podman.base_dir)
    assert not podman.base_dir.exists()
    assert not [path for path in cgroups if path.exists()]
    assert not [container for container in containers
                if (PODMAN_RUNC_ROOT / container).exists()]
    assert not [pid for pid in psutil.pids() if _cmdline_mentions(pid, str(podman.base_dir))]


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        return any(text in word for word in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


def test_spawned_commands_get_their_stdio_and_status(podman: PrivatePodman) -> None:
    result = podman.run("--version")
    assert (result.returncode, result.stdout.startswith("podman version 4.")) == (0, True)
    with tempfile.TemporaryFile() as output:
        read_end, write_end = os.pipe()
        try:
            command = podman.spawner.spawn(
                ["/bin/sh", "-c", "cat; echo \"$MARK\"; exit 9"], env={"MARK": "m"},
                stdio=(read_end, output.fileno(), output.fileno()),
            )
        finally:
            os.close(read_end)
        os.write(write_end, b"in\n")
        os.close(write_end)
        assert command.wait(30) == 9
        output.seek(0)
        assert output.read() == b"in\nm\n"
    sleeper = podman.spawner.spawn(["/bin/sleep", "1000"], env={})
    sleeper.send_signal(signal.SIGTERM)
    assert sleeper.wait(30) == -signal.SIGTERM
