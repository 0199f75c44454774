"""Runtime options through a real containerd: an unknown key in a config file fails Create
naming it, and the legacy containerd.linux.runc.CreateOptions (what containerd's Go client
sends for WithShimCgroup / WithIOUid to any runtime but runc) is honoured as runc-v2 honours
its own Options: the shim daemon joins shim_cgroup, the container's stdio pipes belong to
io_uid/io_gid.

ctr cannot send CreateOptions, so the task is created through containerd's own gRPC Tasks
API with hand-encoded CreateTaskRequest / StartRequest messages, as the Go client does; the
shim gets the options on `start`'s stdin and in its Create, from containerd.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import psutil
import pytest
from google.protobuf import any_pb2

from pyshim.protos.containerd.linux.runc import runc_pb2
from pyshim.shim import wire
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    assert_no_leftovers,
    bundle_dir,
    remove_container,
    shim_processes,
    unique_id,
    wait_until,
)
from tests.e2e.containerd import CtrError, PrivateContainerd

TASKS = "/containerd.services.tasks.v1.Tasks/"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (the only kind CreateTaskRequest needs here)."""
    key = (number << 3) | 2
    length = len(payload)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([key]) + bytes(varint) + payload


def _call(containerd: PrivateContainerd, method: str, request: bytes) -> bytes:
    with grpc.insecure_channel(f"unix://{containerd.address}") as channel:
        call = channel.unary_unary(TASKS + method, request_serializer=None,
                                   response_deserializer=None)
        reply: bytes = call(request, metadata=(("containerd-namespace", "default"),),
                            timeout=60)
    return reply


def create_task(containerd: PrivateContainerd, container_id: str, options: any_pb2.Any,
                stdout: str = "") -> int:
    """containerd Tasks.Create(container_id, stdout = 5, options = 9) over gRPC; returns the
    task's pid."""
    request = _field(1, container_id.encode()) + _field(9, options.SerializeToString())
    if stdout:
        request += _field(5, stdout.encode())
    reply = _call(containerd, "Create", request)
    pid = next(value for number, _, value in wire.fields(reply) if number == 2)
    assert isinstance(pid, int)
    return pid


def _v1_cgroup_dirs(relative: str) -> list[Path]:
    """relative's directory in every mounted cgroup v1 hierarchy (plus the unified one)."""
    root = Path("/sys/fs/cgroup")
    return [path / relative for path in sorted(root.iterdir())
            if (path / "cgroup.procs").exists() or (path / "tasks").exists()]


@pytest.mark.parametrize("forkserver", [True, False], indirect=True,
                         ids=["forkserver-on", "forkserver-off"])
def test_legacy_create_options_put_the_shim_in_shim_cgroup(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    cid = unique_id("legacy-opts")
    relative = f"pyshim-test/{cid}"
    created: list[Path] = []
    try:
        for directory in _v1_cgroup_dirs(relative):
            with contextlib.suppress(OSError):
                directory.mkdir(parents=True)
                created.append(directory)
        assert created, "no cgroup hierarchy to make the shim cgroup in"
        # (A script: ctr would take the words of `sh -c` for its own flags.)
        report = busybox_rootfs / f"report-{cid}"
        report.write_text("#!/bin/sh\nstat -L -c %u:%g /proc/self/fd/1\nexec sleep 1000\n")
        report.chmod(0o755)
        shim_containerd.ctr("container", "create", "--runtime", PYSHIM_RUNTIME,
                            "--rootfs", str(busybox_rootfs), cid, f"/{report.name}")
        output = shim_containerd.base_dir / f"{cid}.out"
        options = any_pb2.Any(
            type_url="containerd.linux.runc.CreateOptions",
            value=runc_pb2.CreateOptions(shim_cgroup=f"/{relative}", io_uid=4242,
                                         io_gid=4243).SerializeToString(),
        )
        pid = create_task(shim_containerd, cid, options, stdout=f"file://{output}")
        assert psutil.pid_exists(pid)
        _call(shim_containerd, "Start", _field(1, cid.encode()))
        # The shim makes the stdout pipe io_uid:io_gid's; runc's init then gives its stdio to
        # the process's user (root here) and keeps the group (fixStdioPermissions), so the
        # container sees 0:io_gid, as with runc-v2.
        wait_until(lambda: output.exists() and output.read_text().endswith("\n"),
                   what="the container's stdout")
        assert output.read_text() == "0:4243\n"
        shims = shim_processes(shim_containerd)
        assert len(shims) == 1, [shim.cmdline() for shim in shims]
        shim_pid = shims[0].pid
        joined = [d for d in created if str(shim_pid) in (d / "cgroup.procs").read_text().split()]
        assert joined, f"shim {shim_pid} is in none of {created}"
        assert any("devices" in str(d) or "memory" in str(d) for d in joined), joined
        saved = json.loads((bundle_dir(shim_containerd, cid) / "options.json").read_text())
        assert saved == {"shim_cgroup": f"/{relative}", "io_uid": 4242, "io_gid": 4243}
    finally:
        remove_container(shim_containerd, cid)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        for directory in _v1_cgroup_dirs("pyshim-test"):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: another run may use it
    assert_no_leftovers(shim_containerd, [cid])


@pytest.mark.parametrize("key", ["binary", "BinaryNme"])
def test_an_unknown_option_key_fails_create_naming_it(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path, key: str
) -> None:
    cid = unique_id("unknown-opt")
    config = shim_containerd.base_dir / f"runtime-{cid}.toml"
    config.write_text(f'{key} = "/usr/sbin/runc"\n')
    try:
        with pytest.raises(CtrError) as raised:
            shim_containerd.ctr("run", "--runtime", PYSHIM_RUNTIME, "--runtime-config-path",
                                str(config), "--rootfs", str(busybox_rootfs), cid, "/bin/true")
        stderr = raised.value.stderr
        assert "invalid argument" in stderr.lower(), stderr
        assert f"unknown option '{key}'" in stderr and "binary_name" in stderr, stderr
    finally:
        remove_container(shim_containerd, cid)
        os.unlink(config)
    assert_no_leftovers(shim_containerd, [cid])
