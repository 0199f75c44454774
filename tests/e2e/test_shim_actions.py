"""The shim binary's own actions against real containerd and runc: `-info`, `-v`, a shim
killed under containerd (its `delete` cleans up and reports the exit the daemon recorded),
and `start` joining a live shim or replacing a stale socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil

from pyshim.protos.containerd.types import introspection_pb2
from tests.e2e.conftest import (
    SHIM_BIN_DIR,
    assert_no_leftovers,
    bundle_dir,
    remove_container,
    shim_processes,
    task_list,
    unique_id,
    wait_until,
)
from tests.e2e.containerd import PrivateContainerd

SHIM = str(SHIM_BIN_DIR / "containerd-shim-pyshim-v1")
RUNTIME = "io.containerd.pyshim.v1"


def test_info_prints_runtime_info_with_runc_features() -> None:
    result = subprocess.run([SHIM, "-info"], input=b"", capture_output=True, check=True,
                            timeout=30)
    info = introspection_pb2.RuntimeInfo.FromString(result.stdout)
    assert info.name == RUNTIME
    assert info.version.version
    assert info.features.type_url.endswith("/features/Features")
    assert "ociVersionMin" in json.loads(info.features.value)
    assert result.stderr == b""


def test_version_and_usage_errors() -> None:
    version = subprocess.run([SHIM, "-v"], capture_output=True, text=True, check=True)
    assert RUNTIME in version.stdout
    missing = subprocess.run([SHIM, "-id", "x", "start"], capture_output=True, text=True)
    assert missing.returncode != 0
    assert "shim namespace cannot be empty" in missing.stderr
    unknown = subprocess.run([SHIM, "-bogus", "start"], capture_output=True, text=True)
    assert unknown.returncode != 0
    assert "flag provided but not defined: -bogus" in unknown.stderr


def _only_shim(containerd: PrivateContainerd, container_id: str) -> psutil.Process:
    shims = shim_processes(containerd)
    assert len(shims) == 1, [shim.cmdline() for shim in shims]
    return shims[0]


def test_killed_shim_is_cleaned_up_by_delete(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    """containerd notices the dead shim, runs `delete`, which kills the container (runc
    delete --force) and removes the dead socket (runc-v2 leaves it behind)."""
    container_id = unique_id("killed")
    with shim_containerd.subscribe_events() as events:
        shim_containerd.ctr("run", "-d", "--runtime", RUNTIME, "--rootfs", str(busybox_rootfs),
                            container_id, "/bin/sleep", "1000")
        init_pid = task_list(shim_containerd)[container_id][0]
        socket = Path(
            (bundle_dir(shim_containerd, container_id) / "address").read_text()
            .removeprefix("unix://"))
        shim = _only_shim(shim_containerd, container_id)
        os.kill(shim.pid, signal.SIGKILL)
        exit_line = events.wait_for(
            lambda line: "/tasks/exit" in line and container_id in line, timeout=20)
        assert '"exit_status":137' in exit_line
    wait_until(lambda: not psutil.pid_exists(init_pid)
               or psutil.Process(init_pid).status() == psutil.STATUS_ZOMBIE,
               what="container process killed by delete")
    wait_until(lambda: not socket.exists(), what="dead shim socket removed")
    remove_container(shim_containerd, container_id)
    assert_no_leftovers(shim_containerd, [container_id])


def test_delete_reports_the_recorded_exit_status(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    """The container exited with 7, then its shim died: containerd's `delete` says 7, not the
    blanket 137 runc-v2 reports."""
    container_id = unique_id("recorded")
    shim_containerd.ctr("run", "-d", "--runtime", RUNTIME, "--rootfs", str(busybox_rootfs),
                        container_id, "/bin/sh", "-c", "exit 7")
    bundle = bundle_dir(shim_containerd, container_id)
    wait_until(lambda: (bundle / "init.exit").exists(), what="exit recorded in the bundle")
    assert json.loads((bundle / "init.exit").read_text())["status"] == 7
    with shim_containerd.subscribe_events() as events:
        shim = _only_shim(shim_containerd, container_id)
        os.kill(shim.pid, signal.SIGKILL)
        delete_line = events.wait_for(
            lambda line: "/tasks/delete" in line and container_id in line, timeout=20)
    assert '"exit_status":7' in delete_line
    remove_container(shim_containerd, container_id)
    assert_no_leftovers(shim_containerd, [container_id])


def test_start_replaces_a_stale_socket(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    """A socket file nobody listens on (a shim that died) does not block the next start."""
    container_id = unique_id("stale")
    path = shim_containerd.shim_socket_path("default", container_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    import socket as socket_module

    stale = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: connect() is refused
    try:
        result = shim_containerd.ctr(
            "run", "--rm", "--runtime", RUNTIME, "--rootfs", str(busybox_rootfs),
            container_id, "/bin/echo", "fresh")
        assert result.stdout == "fresh\n"
    finally:
        if path.exists():
            path.unlink()
    assert_no_leftovers(shim_containerd, [container_id])
