"""Create's one-shot work in a child forked for it (pyshim/process/oneshot.py), against the
stand-in runtime (fake/oci_runtime.py) or a runtime script written here: the same container and
the same errors as the in-process create (each case runs both ways), the init re-parented to
us (the child subreaper), the rootfs mounted and undone, a cancelled create and a runtime that
overran killed with their process group, and a child that dies without a report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyshim import errors, mount
from pyshim.io import PipeIO, StdioConfig
from pyshim.io.pipes import open_file_target
from pyshim.process import Container, ContainerConfig
from pyshim.reaper import Reaper
from pyshim.runtime import RuntimeConfig
from tests.integration.test_engine_front_end import (
    FAKE_RUNTIME,
    RecordingFiles,
    RecordingListener,
    _parent_of,
    runtime_calls,
    runtime_cwds,
    workdir,
)
from tests.integration.test_reaper_io import with_reaper

__all__ = ["workdir"]  # the fixture, shared

BOTH_WAYS = pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child"])

#: A runtime that records its pid and parent's pid, then sleeps in place (`create`) until it
#: is killed or times out; `delete` succeeds.
SLEEPING_RUNTIME = """#!/bin/sh
state=$(dirname "$0")
for arg; do last=$arg; case "$arg" in delete) echo delete >> "$state/calls"; exit 0 ;; esac; done
echo create >> "$state/calls"
echo $PPID > "$state/runtime.ppid"
echo $$ > "$state/runtime.pid.tmp" && mv "$state/runtime.pid.tmp" "$state/runtime.pid"
exec sleep 60
"""
#: A runtime whose create succeeds but writes no pid file.
NO_PID_FILE_RUNTIME = "#!/bin/sh\nexit 0\n"


def config(workdir: Path, in_child: bool, **runtime: object) -> ContainerConfig:
    settings: dict[str, object] = {
        "binary": FAKE_RUNTIME, "log_path": str(workdir / "oci-log"), "timeout": 20}
    return ContainerConfig(runtime=RuntimeConfig(**{**settings, **runtime}),  # type: ignore[arg-type]
                           create_in_child=in_child)


def container(workdir: Path, reaper: Reaper, in_child: bool, files: RecordingFiles | None = None,
              **runtime: object) -> Container:
    return Container(container_id="c1", bundle=str(workdir / "bundle"),
                     config=config(workdir, in_child, **runtime), reaper=reaper,
                     listener=RecordingListener(),
                     files=files or RecordingFiles(workdir / "files"))


def script(workdir: Path, text: str) -> str:
    path = workdir / "state" / "runtime"
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


async def until_exists(path: Path) -> None:
    """Until the runtime wrote `path` (bounded by with_reaper's 30 s): polled, as files
    give no event."""
    for _ in range(1500):
        if os.path.exists(path):  # noqa: ASYNC240 (one stat)
            return
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """Whether pid has exited (and was reaped, or is a zombie), waiting up to 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def rootfs_source(workdir: Path) -> Iterator[Path]:
    """A directory bind-mounted as the rootfs; unmounted afterwards whatever happened."""
    source = workdir / "lower"
    source.mkdir()
    (source / "marker").write_text("rootfs")
    yield source
    target = workdir / "bundle" / "rootfs"
    while mounted(target):
        mount.unmount_all(str(target))


@BOTH_WAYS
def test_create_start_kill_delete(workdir: Path, rootfs_source: Path, in_child: bool) -> None:
    files = RecordingFiles(workdir / "files")
    rootfs = workdir / "bundle" / "rootfs"

    async def scenario(reaper: Reaper) -> tuple[int, int | None, bool, bool, int]:
        box = container(workdir, reaper, in_child, files)
        pid = await box.create([mount.Mount("bind", str(rootfs_source), options=("rbind",))],
                               StdioConfig())
        parent, was_mounted = _parent_of(pid), mounted(rootfs)
        await box.init.operate(lambda: box.start(box.init))
        await box.init.operate(lambda: box.init.state.kill(signal.SIGKILL, False))
        status, _ = await asyncio.wait_for(box.init.wait(), 10)
        await box.init.operate(box.init.state.delete)
        await box.close()
        return pid, parent, was_mounted, box.private_pid_namespace, status

    pid, parent, was_mounted, private_pid_namespace, status = with_reaper(scenario)
    assert parent == os.getpid()  # the init re-parented to us when the runtime exited
    assert files.created_pids == [pid] and status == 137
    assert [(exec_id, record.status) for exec_id, record in files.exits] == [(None, 137)]
    assert was_mounted and (rootfs / "marker").exists() is False  # mounted, then undone
    assert private_pid_namespace  # from the bundle's config.json
    bundle = str(workdir / "bundle")
    assert runtime_calls(workdir)[0] == [
        "--log", str(workdir / "oci-log"), "--log-format", "json", "create",
        "--bundle", bundle, "--pid-file", files.pid_file(None), "c1"]
    assert runtime_cwds(workdir)[0] == bundle


@BOTH_WAYS
def test_runtime_failure_is_the_same_error(workdir: Path, rootfs_source: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           in_child: bool) -> None:
    monkeypatch.setenv("FAKE_RUNTIME_FAIL", "create")
    files = RecordingFiles(workdir / "files")

    async def scenario(reaper: Reaper) -> errors.RuntimeFailed:
        box = container(workdir, reaper, in_child, files)
        io = PipeIO(stdout=open_file_target(str(workdir / "out")),
                    stderr=open_file_target(str(workdir / "err")))
        with pytest.raises(errors.RuntimeFailed) as raised:
            await box.create([mount.Mount("bind", str(rootfs_source), options=("rbind",))],
                             StdioConfig(), io=io)
        return raised.value

    error = with_reaper(scenario)
    assert isinstance(error, errors.RuntimeFailed)
    assert error.message == "container c1: OCI runtime create failed: fake create failed"
    assert (error.container_id, error.process_id, error.cause) == ("c1", "", "fake create failed")
    assert error.exit_status == 1 and error.command == "create"
    assert error.stderr == b"fake create failed\n"
    assert files.created_pids == []
    assert [call[4:6] for call in runtime_calls(workdir)] == [["create", "--bundle"],
                                                               ["delete", "--force"]]
    assert not mounted(workdir / "bundle" / "rootfs")


@BOTH_WAYS
@pytest.mark.parametrize("broken", ["no bundle", "no config.json", "not an object", "no pid file"])
def test_bundle_and_pid_file_errors_are_the_same(workdir: Path, in_child: bool,
                                                 broken: str) -> None:
    bundle = workdir / "bundle"
    runtime: dict[str, object] = {}
    if broken == "no bundle":
        bundle = workdir / "missing"
    elif broken == "no config.json":
        (bundle / "config.json").unlink()
    elif broken == "not an object":
        (bundle / "config.json").write_text("[]")
    else:
        runtime["binary"] = script(workdir, NO_PID_FILE_RUNTIME)

    async def scenario(reaper: Reaper) -> errors.EngineError:
        box = Container(container_id="c1", bundle=str(bundle),
                        config=config(workdir, in_child, **runtime), reaper=reaper,
                        listener=RecordingListener(), files=RecordingFiles(workdir / "files"))
        with pytest.raises(errors.EngineError) as raised:
            await box.create([], StdioConfig())
        return raised.value

    error = with_reaper(scenario)
    pid_file = workdir / "files" / "init.pid"
    expected = {
        "no bundle": (errors.InvalidInput, f"container c1: bundle {bundle} does not exist"),
        "no config.json": (errors.InvalidInput,
                           f"container c1: bundle {bundle} has no config.json"),
        "not an object": (errors.InvalidInput,
                          f"container c1: {bundle}/config.json is not a JSON object"),
        "no pid file": (errors.EngineError, "container c1: runc create left no usable pid file: "
                                            f"[Errno 2] No such file or directory: '{pid_file}'"),
    }[broken]
    assert (type(error), error.message, error.container_id) == (*expected, "c1")


@BOTH_WAYS
def test_a_runtime_that_overruns_is_killed_with_its_group(workdir: Path, in_child: bool) -> None:
    binary = script(workdir, SLEEPING_RUNTIME)

    async def scenario(reaper: Reaper) -> errors.EngineError:
        box = container(workdir, reaper, in_child, binary=binary, timeout=1)
        with pytest.raises(errors.DeadlineExceeded) as raised:
            await box.create([], StdioConfig())
        return raised.value

    error = with_reaper(scenario)
    assert error.message == (f"container c1: OCI runtime create failed: {binary} create did "
                             "not finish within 1 s; killed it")
    assert gone(int((workdir / "state" / "runtime.pid").read_text()))
    assert (workdir / "state" / "calls").read_text().split() == ["create", "delete"]


@BOTH_WAYS
def test_a_cancelled_create_kills_the_runtime_and_deletes(workdir: Path, in_child: bool) -> None:
    script(workdir, SLEEPING_RUNTIME)
    runtime_pid = workdir / "state" / "runtime.pid"

    async def scenario(reaper: Reaper) -> None:
        box = container(workdir, reaper, in_child, binary=str(workdir / "state" / "runtime"))
        creating = asyncio.ensure_future(box.create([], StdioConfig()))
        await until_exists(runtime_pid)
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating

    with_reaper(scenario)
    assert gone(int(runtime_pid.read_text()))
    assert (workdir / "state" / "calls").read_text().split() == ["create", "delete"]


def test_a_child_that_dies_without_a_report(workdir: Path) -> None:
    script(workdir, SLEEPING_RUNTIME)
    state = workdir / "state"
    held: list[str] = []
    sentinel_read, sentinel_write = os.pipe()  # one of "the daemon's" fds

    async def scenario(reaper: Reaper) -> errors.EngineError:
        box = container(workdir, reaper, True, binary=str(state / "runtime"))
        creating = asyncio.ensure_future(box.create([], StdioConfig()))
        await until_exists(state / "runtime.pid")
        child = int((state / "runtime.ppid").read_text())
        held.extend(os.readlink(f"/proc/{child}/fd/{fd}")
                    for fd in os.listdir(f"/proc/{child}/fd"))
        os.kill(child, signal.SIGKILL)
        with pytest.raises(errors.EngineError) as raised:
            await creating
        return raised.value

    try:
        error = with_reaper(scenario)
        sentinel = os.readlink(f"/proc/self/fd/{sentinel_write}")
    finally:
        os.close(sentinel_read)
        os.close(sentinel_write)
    assert sentinel not in held  # the child closed every fd but stdio, log and report pipe
    assert len(held) <= 5, held
    child = int((state / "runtime.ppid").read_text())
    assert child != os.getpid()
    assert error.message == (f"container c1: the create child (pid {child}) ended without a "
                             "report (exit status 137)")
    assert gone(int((state / "runtime.pid").read_text()))  # its runtime went with it
    assert (state / "calls").read_text().split() == ["create", "delete"]


def test_the_report_of_a_successful_create_names_the_cgroup(workdir: Path) -> None:
    async def scenario(reaper: Reaper) -> tuple[object, object]:
        box = container(workdir, reaper, True)
        await box.create([], StdioConfig())
        found = box.cgroup
        box.cgroup = None
        box._find_cgroup()  # what the daemon would find itself
        await box.init.operate(lambda: box.init.state.kill(signal.SIGKILL, False))
        await asyncio.wait_for(box.init.wait(), 10)
        await box.close()
        return found, box.cgroup

    found, looked_up = with_reaper(scenario)
    assert found is not None and found == looked_up


def test_json_of_the_fake_bundle_is_read_in_the_child(workdir: Path) -> None:
    # Host pid namespace: the engine must then kill the container's processes itself.
    (workdir / "bundle" / "config.json").write_text(json.dumps({"linux": {"namespaces": []}}))

    async def scenario(reaper: Reaper) -> bool:
        box = container(workdir, reaper, True)
        await box.create([], StdioConfig())
        private = box.private_pid_namespace
        with contextlib.suppress(ProcessLookupError):
            os.kill(box.init.pid, signal.SIGKILL)
        await asyncio.wait_for(box.init.wait(), 10)
        await box.close()
        return private

    assert with_reaper(scenario) is False
