"""Bad inputs get the right status code and a message naming the container, the process and the
cause (spec §2.6): first through ``ctr``, then with direct ttrpc calls to the shim's socket for
what ``ctr`` cannot send (a missing bundle, an invalid config.json, unknown container and
exec ids, Start/Delete of a running init, Checkpoint, ResizePty).

runc-v2 (``PYSHIM_E2E_REFERENCE=1``) runs the same tests; where its wording differs from ours
the tests check the code and the words both share, and pyshim's own wording only for pyshim.

Some refusals never reach the shim: containerd itself answers ``ctr task start`` of a running
task (``task <id>: already exists``) and ``ctr task delete`` of a running one (``task must be
stopped before deletion: running: failed precondition``). The direct calls check what the shim
itself answers in those situations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import Client, Code, RPCError
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    TASK,
    assert_no_leftovers,
    bundle_dir,
    call_shim,
    is_pyshim,
    oci_spec,
    remove_container,
    shim_address,
    start_shim_containerd,
    task_list,
    task_status,
    unique_id,
    wait_for_status,
    write_spec,
)
from tests.e2e.containerd import PrivateContainerd, make_busybox_rootfs

ReplyT = TypeVar("ReplyT", bound=Message)


def start_sleeper(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, container_id: str
) -> int:
    containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs", str(rootfs), container_id,
                   "/bin/sleep", "1000")
    pid, status = task_list(containerd)[container_id]
    assert status == "RUNNING"
    return pid


def ctr_failure(result_stderr: str) -> str:
    """ctr's error line (``ctr: <message>``) out of its stderr."""
    lines = [line for line in result_stderr.splitlines() if line.startswith("ctr: ")]
    assert lines, f"no 'ctr: ' error line in {result_stderr!r}"
    return lines[-1][len("ctr: "):]


# ------------------------------------------------------------------------ through ctr


def test_kill_of_unknown_exec_id_is_not_found(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-exec")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        result = shim_containerd.ctr("task", "kill", "--exec-id", "nope", cid, check=False)
        assert result.returncode != 0
        message = ctr_failure(result.stderr)
        assert message.endswith("not found"), message
        assert "nope" in message
        if is_pyshim(runtime):
            assert cid in message
        assert task_status(shim_containerd, cid) == "RUNNING"
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_start_of_running_task_is_refused(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-start")
    try:
        pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        result = shim_containerd.ctr("task", "start", cid, check=False, timeout=30)
        assert result.returncode != 0
        message = ctr_failure(result.stderr)
        assert "already exists" in message and cid in message, message
        assert task_list(shim_containerd)[cid] == (pid, "RUNNING")
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_delete_of_running_task_is_refused_but_force_works(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-del")
    try:
        pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        result = shim_containerd.ctr("task", "delete", cid, check=False)
        assert result.returncode != 0
        message = ctr_failure(result.stderr)
        assert "must be stopped" in message and "failed precondition" in message, message
        assert task_list(shim_containerd)[cid] == (pid, "RUNNING")
        forced = shim_containerd.ctr("task", "rm", "--force", cid)
        assert f"task {cid} exit with non-zero exit code 137" in forced.stderr
        assert task_status(shim_containerd, cid) is None
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_duplicate_exec_id_already_exists(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-dup")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        shim_containerd.ctr("task", "exec", "--detach", "--exec-id", "twice", cid,
                            "/bin/sleep", "1000")
        result = shim_containerd.ctr("task", "exec", "--detach", "--exec-id", "twice", cid,
                                     "/bin/sleep", "1000", check=False)
        assert result.returncode != 0
        message = ctr_failure(result.stderr)
        assert message.endswith("already exists") and "twice" in message, message
        if is_pyshim(runtime):
            assert cid in message
        # The first exec is untouched.
        pids = shim_containerd.ctr("task", "ps", cid).stdout
        assert sum("twice" in line for line in pids.splitlines()) == 1, pids
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_pause_and_resume_in_the_wrong_state_are_refused(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-pause")
    try:
        start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
        resumed = shim_containerd.ctr("task", "resume", cid, check=False)
        assert resumed.returncode != 0
        assert "cannot resume a running process" in ctr_failure(resumed.stderr)
        shim_containerd.ctr("task", "pause", cid)
        for args, words in [
            (("task", "pause", cid), "cannot pause a paused container"),
            (("task", "exec", "--exec-id", "e1", cid, "/bin/true"),
             "cannot exec in a paused state"),
        ]:
            result = shim_containerd.ctr(*args, check=False)
            assert result.returncode != 0, args
            message = ctr_failure(result.stderr)
            assert words in message and message.endswith("unknown"), message
            if is_pyshim(runtime):
                assert cid in message
        assert task_status(shim_containerd, cid) == "PAUSED"
        shim_containerd.ctr("task", "resume", cid)
        assert task_status(shim_containerd, cid) == "RUNNING"
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_command_not_found_is_an_oci_runtime_create_failure(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("err-cmd")
    result = shim_containerd.ctr("run", "--rm", "--runtime", runtime, "--rootfs",
                                 str(busybox_rootfs), cid, "/bin/nonexistent", check=False)
    assert result.returncode != 0
    message = ctr_failure(result.stderr)
    assert "OCI runtime create failed" in message, message
    assert "/bin/nonexistent" in message and "no such file or directory" in message, message
    if is_pyshim(runtime):
        assert cid in message
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, [cid])


def test_spec_file_with_missing_command_fails_and_cleans_up(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """``ctr run --config`` with a spec whose process.args[0] does not exist."""
    cid = unique_id("err-spec")
    spec = oci_spec(shim_containerd, busybox_rootfs, ["/no/such/program", "arg"],
                    container_id=cid)
    path = write_spec(shim_containerd.base_dir / f"{cid}.json", spec)
    result = shim_containerd.ctr("run", "--rm", "--runtime", runtime, "--config", str(path),
                                 cid, check=False)
    assert result.returncode != 0
    message = ctr_failure(result.stderr)
    assert "OCI runtime create failed" in message, message
    assert "/no/such/program" in message, message
    assert shim_containerd.ctr("container", "ls", "-q").stdout.split() == []
    assert_no_leftovers(shim_containerd, [cid])


def test_invalid_spec_file_is_refused_by_ctr(shim_containerd: PrivateContainerd) -> None:
    """An invalid JSON spec never reaches a shim: ctr refuses it (documents why the
    invalid-config.json case is tested with a direct Create below)."""
    path = shim_containerd.base_dir / "broken.json"
    path.write_text('{"ociVersion": ')
    result = shim_containerd.ctr("run", "--rm", "--runtime", PYSHIM_RUNTIME, "--config",
                                 str(path), unique_id("err-json"), check=False)
    assert result.returncode != 0
    assert "ctr: " in result.stderr
    assert_no_leftovers(shim_containerd)


def _tools_without_runc(directory: Path) -> Path:
    """A directory of symlinks to every program on the usual PATH except ``runc``."""
    directory.mkdir()
    for source in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        try:
            names = sorted(os.listdir(source))
        except OSError:
            continue
        for name in names:
            link = directory / name
            if name == "runc" or link.is_symlink() or link.exists():
                continue
            link.symlink_to(os.path.join(source, name))
    return directory


def test_missing_runc_binary_fails_with_a_message_naming_runc(
    shim_containerd: PrivateContainerd, runtime: str
) -> None:
    """A containerd whose PATH has the shims but no ``runc``: ``ctr run`` fails cleanly.

    (``shim_containerd`` only checks the requirements and holds the tools directory.)
    """
    tools = _tools_without_runc(shim_containerd.base_dir / "tools-without-runc")
    assert not (tools / "runc").exists()
    daemon = start_shim_containerd(path=str(tools))
    try:
        cid = unique_id("err-runc")
        rootfs = make_busybox_rootfs(daemon.base_dir / "rootfs")
        result = daemon.ctr("run", "--rm", "--runtime", runtime, "--rootfs", str(rootfs), cid,
                            "/bin/true", check=False)
        assert result.returncode != 0
        message = ctr_failure(result.stderr)
        assert "runc" in message, message
        if is_pyshim(runtime):
            assert cid in message
        assert daemon.ctr("container", "ls", "-q").stdout.split() == []
        assert_no_leftovers(daemon, [cid])
    finally:
        daemon.stop()


# --------------------------------------------------------------- direct ttrpc calls


async def expect_error(
    client: Client, method: str, request: Message, reply_type: type[ReplyT]
) -> RPCError:
    """Call ``method`` and return the error it must fail with."""
    with pytest.raises(RPCError) as caught:
        await client.call(TASK, method, request, reply_type, timeout=20)
    return caught.value


def code_of(error: RPCError) -> int:
    return error.received_code if error.received_code is not None else int(error.code)


@pytest.fixture
def running_task(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> tuple[str, str, int]:
    """(container id, shim address from its bundle, init pid) of a running ``sleep``."""
    cid = unique_id("direct")
    pid = start_sleeper(shim_containerd, runtime, busybox_rootfs, cid)
    address = shim_address(shim_containerd, cid)
    assert address.startswith("unix:///run/containerd/s/"), address
    return cid, address, pid


def finish_running_task(containerd: PrivateContainerd, cid: str) -> None:
    """The task still runs, then is removed with ctr, and nothing is left behind."""
    try:
        assert task_status(containerd, cid) == "RUNNING"
        containerd.ctr("task", "rm", "--force", cid)
        containerd.ctr("container", "rm", cid)
    finally:
        remove_container(containerd, cid)
    assert_no_leftovers(containerd, [cid])


def test_create_with_missing_bundle(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, _ = running_task
    other = unique_id("nobundle")

    async def scenario(client: Client) -> None:
        request = shim_pb2.CreateTaskRequest(id=other, bundle="/nonexistent/bundle")
        error = await expect_error(client, "Create", request, shim_pb2.CreateTaskResponse)
        assert code_of(error) in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), error
        assert "/nonexistent/bundle" in error.message
        if is_pyshim(runtime):
            assert other in error.message
        # Nothing was registered for that id.
        gone = await expect_error(client, "State", shim_pb2.StateRequest(id=other),
                                  shim_pb2.StateResponse)
        assert code_of(gone) == Code.NOT_FOUND

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_create_with_invalid_config_json(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, _ = running_task
    other = unique_id("badjson")
    bundle = shim_containerd.base_dir / "bad-bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text("{not json")

    async def scenario(client: Client) -> None:
        request = shim_pb2.CreateTaskRequest(id=other, bundle=str(bundle))
        error = await expect_error(client, "Create", request, shim_pb2.CreateTaskResponse)
        # runc-v2: UNKNOWN "OCI runtime create failed: runc create failed: invalid character
        # 'n' looking for beginning of object key string"
        assert code_of(error) in (Code.UNKNOWN, Code.INVALID_ARGUMENT), error
        text = error.message.lower()
        assert "invalid character" in text or "json" in text, error.message
        if is_pyshim(runtime):
            assert other in error.message

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_create_of_an_existing_id_fails_and_leaves_it_running(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, pid = running_task

    async def scenario(client: Client) -> None:
        request = shim_pb2.CreateTaskRequest(id=cid, bundle=str(bundle_dir(shim_containerd, cid)))
        error = await expect_error(client, "Create", request, shim_pb2.CreateTaskResponse)
        # runc-v2: UNKNOWN "OCI runtime create failed: runc create failed: container with
        # given ID already exists"
        assert "already exists" in error.message, error
        state = await client.call(TASK, "State", shim_pb2.StateRequest(id=cid),
                                  shim_pb2.StateResponse, timeout=20)
        assert (state.pid, state.status) == (pid, task_pb2.RUNNING)

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_unknown_container_id_is_not_found(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, _ = running_task
    ghost = unique_id("ghost")

    async def scenario(client: Client) -> None:
        calls: list[tuple[str, Message, type[Message]]] = [
            ("State", shim_pb2.StateRequest(id=ghost), shim_pb2.StateResponse),
            ("Kill", shim_pb2.KillRequest(id=ghost, signal=9), empty_pb2.Empty),
            ("Delete", shim_pb2.DeleteRequest(id=ghost), shim_pb2.DeleteResponse),
            ("Start", shim_pb2.StartRequest(id=ghost), shim_pb2.StartResponse),
            ("Pids", shim_pb2.PidsRequest(id=ghost), shim_pb2.PidsResponse),
        ]
        for method, request, reply_type in calls:
            error = await expect_error(client, method, request, reply_type)
            assert code_of(error) == Code.NOT_FOUND, (method, error)
            assert "container not created" in error.message, (method, error.message)
            if is_pyshim(runtime):
                assert ghost in error.message, (method, error.message)
        connected = await client.call(TASK, "Connect", shim_pb2.ConnectRequest(id=ghost),
                                      shim_pb2.ConnectResponse, timeout=20)
        assert connected.task_pid == 0 and connected.shim_pid > 0

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_start_and_delete_of_a_running_init(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, pid = running_task

    async def scenario(client: Client) -> None:
        started = await expect_error(client, "Start", shim_pb2.StartRequest(id=cid),
                                     shim_pb2.StartResponse)
        assert code_of(started) == Code.UNKNOWN, started
        assert "cannot start a running process" in started.message, started.message
        deleted = await expect_error(client, "Delete", shim_pb2.DeleteRequest(id=cid),
                                     shim_pb2.DeleteResponse)
        assert code_of(deleted) == Code.UNKNOWN, deleted
        assert "cannot delete a running process" in deleted.message, deleted.message
        if is_pyshim(runtime):
            assert cid in started.message and cid in deleted.message
        state = await client.call(TASK, "State", shim_pb2.StateRequest(id=cid),
                                  shim_pb2.StateResponse, timeout=20)
        assert (state.pid, state.status) == (pid, task_pb2.RUNNING)

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_unknown_exec_id_is_not_found(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, _ = running_task

    async def scenario(client: Client) -> None:
        for method, request, reply_type in [
            ("State", shim_pb2.StateRequest(id=cid, exec_id="nope"), shim_pb2.StateResponse),
            ("Kill", shim_pb2.KillRequest(id=cid, exec_id="nope", signal=9),
             empty_pb2.Empty),
            ("Delete", shim_pb2.DeleteRequest(id=cid, exec_id="nope"), shim_pb2.DeleteResponse),
        ]:
            error = await expect_error(client, method, request, reply_type)
            assert code_of(error) == Code.NOT_FOUND, (method, error)
            assert "nope" in error.message, (method, error.message)
            if is_pyshim(runtime):
                assert cid in error.message, (method, error.message)

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_checkpoint_is_refused(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    cid, address, _ = running_task
    image = shim_containerd.base_dir / "checkpoint"

    async def scenario(client: Client) -> None:
        request = shim_pb2.CheckpointTaskRequest(id=cid, path=str(image))
        error = await expect_error(client, "Checkpoint", request, empty_pb2.Empty)
        if is_pyshim(runtime):
            assert code_of(error) == Code.UNIMPLEMENTED, error
        else:
            # runc-v2 tries CRIU, which is not usable here: UNKNOWN "... criu failed ...".
            assert code_of(error) == Code.UNKNOWN, error

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_resize_pty_without_terminal_is_a_no_op(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    """ResizePty of a process without a terminal: OK, nothing to resize (spec §3.3.10, as
    runc-v2); of an unknown exec: NOT_FOUND."""
    cid, address, pid = running_task

    async def scenario(client: Client) -> None:
        request = shim_pb2.ResizePtyRequest(id=cid, width=80, height=24)
        await client.call(TASK, "ResizePty", request, empty_pb2.Empty, timeout=20)
        unknown = shim_pb2.ResizePtyRequest(id=cid, exec_id="nope", width=80, height=24)
        error = await expect_error(client, "ResizePty", unknown, empty_pb2.Empty)
        assert code_of(error) == Code.NOT_FOUND, error
        assert "nope" in error.message
        state = await client.call(TASK, "State", shim_pb2.StateRequest(id=cid),
                                  shim_pb2.StateResponse, timeout=20)
        assert (state.pid, state.status, state.terminal) == (pid, task_pb2.RUNNING, False)

    call_shim(address, scenario)
    finish_running_task(shim_containerd, cid)


def test_direct_calls_leave_the_task_usable(
    shim_containerd: PrivateContainerd, runtime: str, running_task: tuple[str, str, int]
) -> None:
    """After a burst of bad requests the shim still serves ctr normally."""
    cid, address, pid = running_task

    async def scenario(client: Client) -> None:
        for _ in range(20):
            await expect_error(client, "State", shim_pb2.StateRequest(id=cid, exec_id="x"),
                               shim_pb2.StateResponse)
            await expect_error(client, "Kill", shim_pb2.KillRequest(id="y", signal=0),
                               empty_pb2.Empty)

    call_shim(address, scenario)
    result = shim_containerd.ctr("task", "exec", "--exec-id", "after", cid, "/bin/echo", "ok")
    assert result.stdout == "ok\n"
    shim_containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
    wait_for_status(shim_containerd, cid, "STOPPED")
    assert task_list(shim_containerd)[cid][0] == pid
    shim_containerd.ctr("task", "delete", cid)
    shim_containerd.ctr("container", "rm", cid)
    assert_no_leftovers(shim_containerd, [cid])
