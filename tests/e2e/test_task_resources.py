"""Resources of a running task against real containerd, runc and cgroup v1: an OOM kill
published as /tasks/oom before the exit (CRI reads it first), and Update through `runc update`
visible in the container's cgroup. Run for each runtime under test."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import empty_pb2

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client
from tests.e2e.conftest import (
    TASK,
    assert_no_leftovers,
    call_shim,
    remove_container,
    shim_address,
    task_list,
    unique_id,
    wait_for_status,
)
from tests.e2e.containerd import PrivateContainerd

MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def test_oom_kill_is_published_before_the_exit(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    container_id = unique_id("oom")
    try:
        with shim_containerd.subscribe_events() as events:
            # dd allocates its 64 MiB block and fills it from /dev/zero: over a 16 MiB limit.
            result = shim_containerd.ctr(
                "run", "--rm", "--runtime", runtime, "--memory-limit", str(16 << 20),
                "--rootfs", str(busybox_rootfs), container_id,
                "/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1",
                check=False, timeout=60)
            events.wait_for_topic("/tasks/delete")
            topics = [line.split()[5] for line in events.lines() if container_id in line
                      and "/tasks/" in line]
        assert result.returncode == 137, (result.stdout, result.stderr)
        assert "/tasks/oom" in topics, topics
        assert topics.index("/tasks/oom") < topics.index("/tasks/exit"), topics
    finally:
        remove_container(shim_containerd, container_id)
    assert_no_leftovers(shim_containerd, [container_id])


def test_update_sets_the_memory_limit(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    container_id = unique_id("update")
    try:
        shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs", str(busybox_rootfs),
                            container_id, "/bin/sleep", "1000")
        wait_for_status(shim_containerd, container_id, "RUNNING")
        pid = task_list(shim_containerd)[container_id][0]
        memory_path = next(
            line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            if line.split(":")[1] == "memory")
        limit_file = MEMORY_CGROUPS / memory_path.lstrip("/") / "memory.limit_in_bytes"
        limit = 48 << 20
        request = shim_pb2.UpdateTaskRequest(id=container_id)
        request.resources.type_url = (
            "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources")
        request.resources.value = json.dumps({"memory": {"limit": limit}}).encode()

        async def scenario(client: Client) -> None:
            await client.call(TASK, "Update", request, empty_pb2.Empty, timeout=20)

        call_shim(shim_address(shim_containerd, container_id), scenario)
        assert int(limit_file.read_text()) == limit
    finally:
        remove_container(shim_containerd, container_id)
    assert_no_leftovers(shim_containerd, [container_id])
