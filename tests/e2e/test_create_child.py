"""Create's one-shot work in a child the monitor forks for it (pyshim/process/oneshot.py), with
real runc: through the engine, a failed runc create is the same error either way; through the
containerd front end (where it is on by default), a Create whose caller gave up is still
completed and recorded, the init ends up the daemon's child, and the create child is gone.
pyshim only (runc-v2 has no such child).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
from google.protobuf import any_pb2, empty_pb2

from pyshim import errors, mount
from pyshim.io import StdioConfig
from pyshim.process import Container
from pyshim.protos.containerd.runc.v1 import options_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.reaper import Reaper
from pyshim.ttrpc import Client
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    assert_no_leftovers,
    call_shim,
    oci_spec,
    remove_container,
    shim_address,
    unique_id,
    wait_until,
    write_spec,
)
from tests.e2e.containerd import PrivateContainerd
from tests.e2e.test_engine_runc import (
    Quiet,
    SessionFiles,
    Setup,
    pipes_to,
    run_as_subreaper,
    setup,
)
from tests.e2e.test_survive_calls import (
    RUNC_ROOT,
    call,
    interrupted,
    kill_and_delete,
    run,
    runc_state,
    shim_state,
    start_sleeper,
)

__all__ = ["setup"]  # the fixture, shared


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child"])
def test_a_failed_runc_create_is_the_same_error_either_way(setup: Setup, in_child: bool) -> None:
    setup.write_spec(["/nonexistent"])
    container_id = unique_id("oneshot-fail")
    files = SessionFiles(setup.base / "files")

    async def scenario(reaper: Reaper) -> errors.RuntimeFailed:
        config = dataclasses.replace(setup.config(), create_in_child=in_child)
        container = Container(container_id=container_id, bundle=str(setup.bundle),
                              config=config, reaper=reaper, listener=Quiet(), files=files)
        try:
            with pytest.raises(errors.RuntimeFailed) as raised:
                await container.create([], StdioConfig(), io=pipes_to(setup.base, "init"))
            return raised.value
        finally:
            await container.close()

    error = run_as_subreaper(scenario)
    assert 'exec: "/nonexistent"' in error.cause
    assert error.message == f"container {container_id}: OCI runtime create failed: {error.cause}"
    assert (error.command, error.exit_status) == ("create", 1)
    assert b'exec: "/nonexistent"' in error.stderr
    assert files.exits == []  # no process existed: no exit recorded
    assert not (setup.runc_root / container_id).exists()  # deleted (--force) after the failure
    assert os.path.getsize(setup.oci_log) > 0  # runc's own log, where its message came from


def test_a_container_on_an_overlay_mounted_by_the_create_child(setup: Setup) -> None:
    """The child mounts the rootfs (an overlay, as containerd's snapshotter asks) in the mount
    namespace it shares with the monitor; runc runs the container on it; the init is the
    monitor's child; delete unmounts it."""
    setup.write_spec(["/bin/cat", "/marker"])
    spec = json.loads((setup.bundle / "config.json").read_text())
    lower = Path(spec["root"]["path"])
    spec["root"] = {"path": "rootfs", "readonly": False}
    (setup.bundle / "config.json").write_text(json.dumps(spec))
    upper, work = setup.base / "upper", setup.base / "work"
    upper.mkdir()
    work.mkdir()
    (upper / "marker").write_text("from the upper layer\n")
    overlay = mount.Mount("overlay", "overlay", options=(
        f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))
    rootfs = setup.bundle / "rootfs"
    container_id = unique_id("oneshot-overlay")
    files = SessionFiles(setup.base / "files")

    async def scenario(reaper: Reaper) -> tuple[int | None, bool, int]:
        config = dataclasses.replace(setup.config(), create_in_child=True)
        container = Container(container_id=container_id, bundle=str(setup.bundle),
                              config=config, reaper=reaper, listener=Quiet(), files=files)
        try:
            pid = await container.create([overlay], StdioConfig(),
                                         io=pipes_to(setup.base, "init"))
            parent = psutil.Process(pid).ppid()
            was_mounted = os.path.ismount(rootfs)  # noqa: ASYNC240 (one stat)
            await container.init.operate(lambda: container.start(container.init))
            status, _ = await container.init.wait()
            await container.init.operate(container.init.state.delete)
            return parent, was_mounted, status
        finally:
            await container.close()
            while os.path.ismount(rootfs):  # noqa: ASYNC240 (a failure above: ours to undo)
                mount.unmount_all(str(rootfs))

    parent, was_mounted, status = run_as_subreaper(scenario)
    assert parent == os.getpid() and was_mounted and status == 0
    assert (setup.base / "init.out").read_text() == "from the upper layer\n"
    assert not os.path.ismount(rootfs)  # the delete unmounted it


def slow_runc(directory: Path) -> Path:
    """A runc wrapper whose `create` waits a second first: long enough for its caller to
    have given up before it is done."""
    real = shutil.which("runc")
    assert real is not None
    wrapper = directory / "runc-slow-create"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do [ "$arg" = create ] && sleep 1; done\n'
        f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_create_whose_caller_left_is_completed_and_its_init_is_the_daemons_child(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path
) -> None:
    cid = unique_id("oneshot")
    other = unique_id("oneshot-other")
    bundle = shim_containerd.base_dir / f"bundle-{other}"
    bundle.mkdir()
    write_spec(bundle / "config.json",
               oci_spec(shim_containerd, busybox_rootfs, ["/bin/sleep", "1000"],
                        container_id=other))
    options = options_pb2.Options(binary_name=str(slow_runc(bundle)))
    request = shim_pb2.CreateTaskRequest(id=other, bundle=str(bundle), options=any_pb2.Any(
        type_url="containerd.runc.v1.Options", value=options.SerializeToString()))
    try:
        first_init = start_sleeper(shim_containerd, PYSHIM_RUNTIME, busybox_rootfs, cid)
        address = shim_address(shim_containerd, cid)

        async def connect(client: Client) -> int:
            reply = await call(client, "Connect", shim_pb2.ConnectRequest(id=cid),
                               shim_pb2.ConnectResponse)
            return int(reply.shim_pid)

        shim_pid = call_shim(address, connect)
        seen = run(interrupted(address, "deadline", "Create", request,
                               shim_pb2.CreateTaskResponse))
        assert seen == "deadline exceeded"

        created: list[Any] = []

        def is_created() -> bool:
            state = run(shim_state(address, other))
            created[:] = [state]
            return state is not None and state.status == task_pb2.CREATED

        wait_until(is_created, what=f"{other} created although its caller left")
        init = created[0].pid
        runc = runc_state(other)
        assert runc is not None and runc["pid"] == init and runc["status"] == "created"
        assert psutil.Process(init).ppid() == shim_pid  # re-parented when runc exited
        # The create child (and runc) are gone: the daemon's children are the two inits.
        wait_until(lambda: {child.pid for child in psutil.Process(shim_pid).children()}
                   == {first_init, init}, what="only the inits left as the daemon's children")
        assert (bundle / "options.json").exists()  # written by the create child

        async def start_kill_delete(client: Client) -> None:
            await call(client, "Start", shim_pb2.StartRequest(id=other), shim_pb2.StartResponse)
            await call(client, "Kill", shim_pb2.KillRequest(id=other, signal=signal.SIGKILL),
                       empty_pb2.Empty)
            await call(client, "Wait", shim_pb2.WaitRequest(id=other), shim_pb2.WaitResponse)
            await call(client, "Delete", shim_pb2.DeleteRequest(id=other),
                       shim_pb2.DeleteResponse)

        call_shim(address, start_kill_delete)
        assert run(shim_state(address, other)) is None and runc_state(other) is None
        kill_and_delete(shim_containerd, cid)
    finally:
        remove_container(shim_containerd, cid)
        subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", other],
                       capture_output=True, check=False)
    assert_no_leftovers(shim_containerd, [cid, other])
