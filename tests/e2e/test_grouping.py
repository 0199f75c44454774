"""Shim grouping (spec §1.6): containers whose specs carry the same grouping annotation are
served by one shim process on one socket, and that shim exits only after the last of them is
deleted. Run for each runtime under test (runc-v2 too with ``PYSHIM_E2E_REFERENCE=1``).

The annotation goes in through ``ctr run --config <spec.json>`` (a spec made from ``ctr oci
spec``) for ``io.kubernetes.cri.sandbox-id``, and through ``ctr run --annotation`` for
``io.containerd.runc.v2.group``.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import (
    assert_no_leftovers,
    oci_spec,
    remove_container,
    shim_address,
    shim_processes,
    task_list,
    unique_id,
    wait_until,
    write_spec,
)
from tests.e2e.containerd import PrivateContainerd

SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
RUNC_GROUP = "io.containerd.runc.v2.group"


def run_grouped(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, container_id: str,
    key: str, group: str,
) -> None:
    """``ctr run -d`` a ``sleep`` carrying the grouping annotation ``key=group``."""
    command = ["/bin/sleep", "1000"]
    if key == SANDBOX_ID:
        spec = oci_spec(containerd, rootfs, command, container_id=container_id,
                        annotations={key: group})
        path = write_spec(containerd.base_dir / f"{container_id}.json", spec)
        containerd.ctr("run", "-d", "--runtime", runtime, "--config", str(path), container_id)
    else:
        containerd.ctr("run", "-d", "--runtime", runtime, "--annotation", f"{key}={group}",
                       "--rootfs", str(rootfs), container_id, *command)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("key", [SANDBOX_ID, RUNC_GROUP])
def test_grouped_containers_share_one_shim_until_the_last_delete(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path, key: str
) -> None:
    group = unique_id("pod")
    first, second = unique_id("grp-a"), unique_id("grp-b")
    socket = shim_containerd.shim_socket_path("default", group)
    try:
        run_grouped(shim_containerd, runtime, busybox_rootfs, first, key, group)
        run_grouped(shim_containerd, runtime, busybox_rootfs, second, key, group)

        # One address for both (the socket of the group, not of either container) ...
        assert shim_address(shim_containerd, first) == f"unix://{socket}"
        assert shim_address(shim_containerd, second) == f"unix://{socket}"
        assert socket.is_socket()
        # ... one shim process, parent of both containers' init processes ...
        shims = shim_processes(shim_containerd)
        assert len(shims) == 1, [shim.cmdline() for shim in shims]
        [shim] = shims
        tasks = task_list(shim_containerd)
        for container_id in (first, second):
            pid, status = tasks[container_id]
            assert status == "RUNNING"
            assert psutil.Process(pid).ppid() == shim.pid
        # ... and both work.
        for container_id in (first, second):
            result = shim_containerd.ctr("task", "exec", "--exec-id", "hello", container_id,
                                         "/bin/echo", container_id)
            assert result.stdout == f"{container_id}\n"

        # Deleting the first leaves the shim serving the second.
        shim_containerd.ctr("task", "rm", "--force", first)
        shim_containerd.ctr("container", "rm", first)
        assert first not in task_list(shim_containerd)
        assert alive(shim), "the shim exited while it still served a container"
        assert socket.is_socket()
        assert shim_processes(shim_containerd) == [shim]
        result = shim_containerd.ctr("task", "exec", "--exec-id", "after", second,
                                     "/bin/echo", "still served")
        assert result.stdout == "still served\n"
        assert task_list(shim_containerd)[second][1] == "RUNNING"
        assert alive(shim)

        # Deleting the last one ends the shim and removes its socket.
        shim_containerd.ctr("task", "rm", "--force", second)
        shim_containerd.ctr("container", "rm", second)
        wait_until(lambda: not alive(shim), what=f"shim {shim.pid} exited")
        wait_until(lambda: not socket.exists(), what=f"socket {socket} removed")
    finally:
        remove_container(shim_containerd, first)
        remove_container(shim_containerd, second)
    assert_no_leftovers(shim_containerd, [first, second, group])


def test_ungrouped_containers_get_a_shim_each(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    first, second = unique_id("solo-a"), unique_id("solo-b")
    try:
        for container_id in (first, second):
            shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs",
                                str(busybox_rootfs), container_id, "/bin/sleep", "1000")
        for container_id in (first, second):
            socket = shim_containerd.shim_socket_path("default", container_id)
            assert shim_address(shim_containerd, container_id) == f"unix://{socket}"
        shims = shim_processes(shim_containerd)
        assert len(shims) == 2, [shim.cmdline() for shim in shims]
        tasks = task_list(shim_containerd)
        parents = {psutil.Process(tasks[cid][0]).ppid() for cid in (first, second)}
        assert parents == {shim.pid for shim in shims}
        for container_id in (first, second):
            shim_containerd.ctr("task", "rm", "--force", container_id)
            shim_containerd.ctr("container", "rm", container_id)
    finally:
        remove_container(shim_containerd, first)
        remove_container(shim_containerd, second)
    assert_no_leftovers(shim_containerd, [first, second])
