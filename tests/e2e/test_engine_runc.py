"""The engine with real runc and a busybox container, configured as the conmon front end will
configure it (no containerd): runtime flags passed through verbatim (podman's `--root=…
--log-format=json --log …`), the front end's own pid files and exit recorder, its own pipes,
an exec session from a process JSON file in a second, adopted Container, and a failed create
that carries runc's stderr.

Runs in the test process (made child subreaper for the test): every container is deleted with
`runc delete --force` in a private runc root, which must be empty afterwards.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prctl
import pytest
import uvloop

from pyshim.io import PipeIO, StdioConfig
from pyshim.io.pipes import open_file_target
from pyshim.process import Container, ContainerConfig, ExitRecord, Process
from pyshim.reaper import Reaper
from pyshim.runtime import RuntimeConfig
from tests.e2e.conftest import require_e2e, unique_id
from tests.e2e.containerd import make_busybox_rootfs

SCENARIO_TIMEOUT = 60.0


@dataclass
class SessionFiles:
    """A conmon-like front end's files: pid files where it says, exits recorded by it."""

    directory: Path
    exits: list[tuple[str | None, int]] = field(default_factory=list)

    def pid_file(self, exec_id: str | None) -> str:
        return str(self.directory / ("pidfile" if exec_id is None else f"{exec_id}-pid"))

    def exec_spec_file(self, exec_id: str) -> str:
        return str(self.directory / f"{exec_id}.json")

    def spool_dir(self, exec_id: str | None) -> str | None:
        return None

    def record_exit(self, exec_id: str | None, record: ExitRecord) -> None:
        self.exits.append((exec_id, record.status))

    def created(self, init_pid: int) -> None:
        pass

    def forget_exec(self, exec_id: str) -> None:
        pass


class Quiet:
    def process_started(self, process: Process) -> None:
        pass

    def process_exited(self, process: Process) -> None:
        pass

    def container_oom(self, container: Container) -> None:
        pass


@dataclass
class Setup:
    base: Path
    bundle: Path
    runc_root: Path
    oci_log: Path
    runc: str

    def config(self) -> ContainerConfig:
        return ContainerConfig(runtime=RuntimeConfig(
            binary=self.runc,
            global_args=(f"--root={self.runc_root}", "--log-format=json", "--log",
                         str(self.oci_log)),
            error_log=str(self.oci_log), timeout=SCENARIO_TIMEOUT,
        ))

    def write_spec(self, args: list[str]) -> None:
        path = self.bundle / "config.json"
        spec: dict[str, Any] = json.loads(path.read_text())
        spec["process"].update(args=args, terminal=False, env=["PATH=/bin"])
        path.write_text(json.dumps(spec))


@pytest.fixture
def setup() -> Iterator[Setup]:
    require_e2e(("runc",), ("/bin/busybox",))
    runc = shutil.which("runc")
    assert runc is not None
    base = Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
    bundle = base / "bundle"
    bundle.mkdir()
    rootfs = make_busybox_rootfs(base / "rootfs")
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": False}
    (bundle / "config.json").write_text(json.dumps(spec))
    (base / "files").mkdir()
    given = Setup(base, bundle, base / "runc-root", base / "oci-log", runc)
    try:
        yield given
    finally:
        for state in given.runc_root.glob("*") if given.runc_root.exists() else []:
            subprocess.run([runc, f"--root={given.runc_root}", "delete", "--force", state.name],
                           check=False, capture_output=True, timeout=60)
        leftovers = list(given.runc_root.glob("*")) if given.runc_root.exists() else []
        shutil.rmtree(base, ignore_errors=True)
        assert leftovers == [], leftovers


def run_as_subreaper(scenario: Any) -> Any:
    async def main() -> Any:
        reaper = Reaper()
        reaper.install(asyncio.get_running_loop())
        prctl.set_child_subreaper(1)
        try:
            return await asyncio.wait_for(scenario(reaper), SCENARIO_TIMEOUT)
        finally:
            prctl.set_child_subreaper(0)
            reaper.uninstall()

    return uvloop.run(main())


def pipes_to(base: Path, name: str) -> PipeIO:
    return PipeIO(stdout=open_file_target(str(base / f"{name}.out")),
                  stderr=open_file_target(str(base / f"{name}.err")))


def test_a_container_and_an_exec_session_with_a_conmon_like_configuration(setup: Setup) -> None:
    setup.write_spec(["/bin/sh", "-c", "echo out; echo err >&2; exec /bin/sleep 60"])
    container_id = unique_id("engine")
    session = setup.base / "files" / "exec-process-1"
    session.write_text(json.dumps({
        "args": ["/bin/sh", "-c", "echo exec-out; exit 4"], "cwd": "/", "env": ["PATH=/bin"],
        "terminal": False, "user": {"uid": 0, "gid": 0},
    }))
    files = SessionFiles(setup.base / "files")
    session_files = SessionFiles(setup.base / "files")

    async def scenario(reaper: Reaper) -> tuple[int, int]:
        container = Container(container_id=container_id, bundle=str(setup.bundle),
                              config=setup.config(), reaper=reaper, listener=Quiet(),
                              files=files)
        try:
            await container.create([], StdioConfig(), io=pipes_to(setup.base, "init"))
            await container.init.operate(lambda: container.start(container.init))
            # An exec session, as conmon runs one: another monitor object for the same
            # container, which it did not create.
            exec_session = Container(container_id=container_id, bundle=str(setup.bundle),
                                     config=setup.config(), reaper=reaper, listener=Quiet(),
                                     files=session_files)
            exec_session.adopt()
            process = exec_session.add_exec("s1", StdioConfig(), spec_file=str(session),
                                            io=pipes_to(setup.base, "exec"))
            await process.operate(lambda: exec_session.start(process))
            exec_status, _ = await process.wait()
            await exec_session.close()
            container.init.signal(9)  # as conmon forwards a signal: by pid
            init_status, _ = await container.init.wait()
            await container.init.operate(container.init.state.delete)
            return exec_status, init_status
        finally:
            await container.close()

    assert run_as_subreaper(scenario) == (4, 137)
    assert (setup.base / "init.out").read_text() == "out\n"
    assert (setup.base / "init.err").read_text() == "err\n"
    assert (setup.base / "exec.out").read_text() == "exec-out\n"
    assert files.exits == [(None, 137)]
    assert session_files.exits == [("s1", 4)]
    assert session.exists()  # the caller's process JSON stays
    assert not (setup.runc_root / container_id).exists()  # deleted


