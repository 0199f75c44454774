"""The engine driven as a non-containerd front end drives it (the conmon monitor, `pyshim run`):
its own runtime command line, its own files and exit recorder, an exec from an existing process
JSON file, a container adopted from another monitor. A stand-in runtime (fake/oci_runtime.py)
records its argv and starts real processes, which the engine's reaper reaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pyshim import errors
from pyshim.io import PipeIO, StdioConfig
from pyshim.io.pipes import open_file_target
from pyshim.process import Container, ContainerConfig, ExitRecord, Process
from pyshim.reaper import Reaper
from pyshim.runtime import RuntimeConfig
from tests.integration.test_reaper_io import with_reaper

FAKE_RUNTIME = str(Path(__file__).parent / "fake" / "oci_runtime.py")
T = TypeVar("T")


@dataclass
class RecordingFiles:
    """ContainerFiles of a front end that keeps its files elsewhere and records exits itself."""

    directory: Path
    exits: list[tuple[str | None, ExitRecord]] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    created_pids: list[int] = field(default_factory=list)

    def pid_file(self, exec_id: str | None) -> str:
        return str(self.directory / ("init.pid" if exec_id is None else f"{exec_id}.pid"))

    def exec_spec_file(self, exec_id: str) -> str:
        return str(self.directory / f"{exec_id}.json")

    def spool_dir(self, exec_id: str | None) -> str | None:
        return None

    def record_exit(self, exec_id: str | None, record: ExitRecord) -> None:
        self.exits.append((exec_id, record))

    def created(self, init_pid: int) -> None:
        self.created_pids.append(init_pid)

    def forget_exec(self, exec_id: str) -> None:
        self.forgotten.append(exec_id)


class RecordingListener:
    def __init__(self) -> None:
        self.events: list[str] = []

    def process_started(self, process: Process) -> None:
        self.events.append(f"started {process.id}")

    def process_exited(self, process: Process) -> None:
        self.events.append(f"exited {process.id} {process.exit_status}")

    def container_oom(self, container: Container) -> None:
        self.events.append("oom")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    # A private pid namespace: the engine does not `kill --all` after the init died.
    (bundle / "config.json").write_text(
        json.dumps({"linux": {"namespaces": [{"type": "pid"}]}}))
    (tmp_path / "files").mkdir()
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(tmp_path / "argv.log"))
    monkeypatch.setenv("FAKE_RUNTIME_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_CREATE_SCRIPT", "exec sleep 60")
    monkeypatch.setenv("FAKE_EXEC_SCRIPT", "exit 3")
    yield tmp_path
    # A failed test may leave the fake init (`sleep 60`) running: killed by pid, only while it
    # is still our child (re-parented to us, the subreaper), so a reused pid is never hit.
    saved = tmp_path / "state" / "init.pid"
    if saved.exists() and _parent_of(int(saved.read_text())) == os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(saved.read_text()), signal.SIGKILL)


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def runtime_calls(workdir: Path) -> list[list[str]]:
    return [call["argv"] for call in _logged(workdir)]


def runtime_cwds(workdir: Path) -> list[str]:
    return [call["cwd"] for call in _logged(workdir)]


def _logged(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "argv.log").read_text().splitlines()]


def conmon_like_config(workdir: Path, **changes: Any) -> ContainerConfig:
    """What the conmon front end builds from `-r … -s --runtime-arg … --runtime-opt …`."""
    settings: dict[str, Any] = {
        "binary": FAKE_RUNTIME, "systemd_cgroup": True,
        "global_args": ("--root=/run/fake", "--log-format=json", "--log",
                        str(workdir / "oci-log")),
        "command_args": ("--debug-opt",), "no_pivot": True, "no_new_keyring": True,
        "error_log": str(workdir / "oci-log"), "timeout": 20,
    }
    runtime = RuntimeConfig(**{**settings, **changes})
    return ContainerConfig(runtime=runtime)


def test_create_start_exec_kill_with_a_front_end_runtime_line_and_files(workdir: Path) -> None:
    bundle = str(workdir / "bundle")
    files = RecordingFiles(workdir / "files")
    listener = RecordingListener()
    spec_file = workdir / "files" / "exec-process-1"
    spec_file.write_text(json.dumps({"args": ["/bin/true"], "terminal": False}))

    async def scenario(reaper: Reaper) -> tuple[int, int, int]:
        container = Container(container_id="c1", bundle=bundle,
                              config=conmon_like_config(workdir), reaper=reaper,
                              listener=listener, files=files)
        pid = await container.create([], StdioConfig())
        await container.init.operate(lambda: container.start(container.init))
        process = container.add_exec("s1", StdioConfig(), spec_file=str(spec_file))
        await process.operate(lambda: container.start(process))
        exec_status, _ = await asyncio.wait_for(process.wait(), 10)
        await container.init.operate(lambda: container.init.state.kill(signal.SIGKILL, False))
        init_status, _ = await asyncio.wait_for(container.init.wait(), 10)
        await container.init.operate(container.init.state.delete)
        await container.close()
        return pid, exec_status, init_status

    pid, exec_status, init_status = with_reaper(scenario)
    assert (exec_status, init_status) == (3, 137)
    assert files.created_pids == [pid]
    assert [(exec_id, record.status) for exec_id, record in files.exits] == [
        ("s1", 3), (None, 137)]
    assert files.forgotten == ["s1"]  # the exec went with the container's delete
    assert spec_file.exists()  # the front end's process JSON is used as it is, never removed
    assert listener.events == ["started c1", "started s1", "exited s1 3", "exited c1 137"]
    calls = runtime_calls(workdir)
    log = str(workdir / "oci-log")
    global_args = ["--systemd-cgroup", "--root=/run/fake", "--log-format=json", "--log", log]
    assert calls[0] == [*global_args, "create", "--bundle", bundle, "--pid-file",
                        files.pid_file(None), "--no-pivot", "--no-new-keyring", "--debug-opt",
                        "c1"]
    assert calls[1] == [*global_args, "start", "c1"]
    assert calls[2] == [*global_args, "exec", "--pid-file", files.pid_file("s1"), "--process",
                        str(spec_file), "--detach", "--debug-opt", "c1"]
    assert calls[3] == [*global_args, "kill", "c1", "9"]
    # By default create runs in the bundle (as runc-v2 runs it), other commands in our cwd.
    assert runtime_cwds(workdir)[:2] == [bundle, os.getcwd()]


def test_runtime_failure_is_an_engine_error_with_the_runtimes_message(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_RUNTIME_FAIL", "create")
    files = RecordingFiles(workdir / "files")

    async def scenario(reaper: Reaper) -> errors.EngineError:
        container = Container(container_id="c2", bundle=str(workdir / "bundle"),
                              config=conmon_like_config(workdir), reaper=reaper,
                              listener=RecordingListener(), files=files)
        # The front end's own pipes: the runtime's stderr is the container's stderr pipe.
        io = PipeIO(stdout=open_file_target(str(workdir / "out")),
                    stderr=open_file_target(str(workdir / "err")))
        with pytest.raises(errors.RuntimeFailed) as raised:
            await container.create([], StdioConfig(), io=io)
        return raised.value

    error = with_reaper(scenario)
    assert error.message == "container c2: OCI runtime create failed: fake create failed"
    assert (error.container_id, error.process_id, error.cause) == ("c2", "", "fake create failed")
    assert isinstance(error, errors.RuntimeFailed) and error.exit_status == 1
    assert error.stderr == b"fake create failed\n"  # what conmon sends on its sync pipe
    assert files.exits == [] and files.created_pids == []  # nothing existed: nothing recorded
    assert [call[5] for call in runtime_calls(workdir)] == ["create", "delete"]


def test_preserved_fds_reach_the_runtime(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The created "container" reports whether fd 3 (ours, passed on or not) is open in it. The
    # stand-in runtime passes fds on as runc does: only 3 … 3+N-1 for --preserve-fds N.
    monkeypatch.setenv("FAKE_CREATE_SCRIPT", "if [ -e /proc/self/fd/3 ]; then exit 7; fi; exit 8")
    try:
        os.fstat(3)
        opened = None
    except OSError:
        opened = os.open(os.devnull, os.O_RDONLY)  # the lowest free number: 3

    async def scenario(reaper: Reaper) -> list[int]:
        statuses = []
        # conmon's way: the flag among its --runtime-opt, the fds inherited (c3c); the flag
        # without pass_fds finds fd 3 closed (ours is close-on-exec: c3d).
        conmon_flag = ("--preserve-fds", "1")
        for name, preserved in (
                ("c3", {"preserve_fds": 1}), ("c3b", {}),
                ("c3c", {"pass_fds": (3,), "command_args": conmon_flag}),
                ("c3d", {"command_args": conmon_flag})):
            container = Container(
                container_id=name, bundle=str(workdir / "bundle"),
                config=conmon_like_config(workdir, **preserved), reaper=reaper,
                listener=RecordingListener(), files=RecordingFiles(workdir / "files"))
            await container.create([], StdioConfig())
            status, _ = await asyncio.wait_for(container.init.wait(), 10)
            await container.close()
            statuses.append(status)
        return statuses

    try:
        assert with_reaper(scenario) == [7, 8, 7, 8]
    finally:
        if opened is not None:
            os.close(opened)
    creates = [call for call in runtime_calls(workdir) if "create" in call]
    assert creates[0][creates[0].index("--preserve-fds") + 1] == "1"
    assert "--preserve-fds" not in creates[1]
    assert creates[2].count("--preserve-fds") == 1  # pass_fds adds no flag of its own


def test_an_adopted_container_runs_execs_only(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EXEC_SCRIPT", "echo exec-out; exit 3")
    files = RecordingFiles(workdir / "files")
    listener = RecordingListener()

    async def scenario(reaper: Reaper) -> int:
        container = Container(container_id="c4", bundle=str(workdir / "bundle"),
                              config=conmon_like_config(workdir, cwd=str(workdir / "files")),
                              reaper=reaper,
                              listener=listener, files=files)
        container.adopt()
        io = PipeIO(stdout=open_file_target(str(workdir / "exec-out")))
        process = container.add_exec("s2", StdioConfig(), {"args": ["/bin/true"]}, io=io)
        await process.operate(lambda: container.start(process))
        status, _ = await asyncio.wait_for(process.wait(), 10)
        with pytest.raises(errors.WrongState):
            await container.init.state.start()
        await container.close()
        return status

    assert with_reaper(scenario) == 3
    assert listener.events == ["started s2", "exited s2 3"]
    assert (workdir / "exec-out").read_text() == "exec-out\n"  # relayed by the front end's io
    exec_call = runtime_calls(workdir)[0]
    assert exec_call[5] == "exec"
    assert runtime_cwds(workdir) == [str(workdir / "files")]  # conmon: the runtime in its cwd
    assert not os.path.exists(files.exec_spec_file("s2"))  # our own process JSON is removed
