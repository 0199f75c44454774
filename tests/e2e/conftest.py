"""Fixtures and collection rules for the end-to-end tests (real containerd, runc, root).

* Every test below this directory gets the ``e2e`` marker (select with ``-m e2e``, or leave
  them out with ``-m "not e2e"``).
* The tests are skipped when they cannot run here (not root, or ``containerd``/``ctr``
  missing), but when the ``CI`` environment variable is set (to anything but ``""``, ``0``,
  ``false`` or ``no``) that is a failure instead: CI must never skip them silently.
* ``containerd``: a started :class:`PrivateContainerd` in a fresh ``/tmp/pyshim-e2e-*``
  directory, stopped (processes killed, mounts and files removed) after the test whatever
  happened.
* ``shim_containerd``: the same, but with ``<repo>/bin`` first on containerd's PATH, so that
  the runtime ``io.containerd.pyshim.v1`` resolves to ``bin/containerd-shim-pyshim-v1``.
* ``runtime``: parametrized over the runtimes under test: ``io.containerd.pyshim.v1`` always,
  plus the Go reference ``io.containerd.runc.v2`` when ``PYSHIM_E2E_REFERENCE=1`` (to check
  that the tests themselves are right).
* ``busybox_rootfs``: a busybox rootfs directory below the ``shim_containerd``'s base_dir.

Helpers for the task tests: :func:`unique_id`, :func:`shim_processes`,
:func:`task_status`/:func:`wait_for_status`, :func:`assert_no_leftovers`, :func:`oci_spec`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import pytest
import uvloop

from pyshim.ttrpc import Client
from tests.e2e.containerd import (
    DEFAULT_RUNC_ROOT,
    PrivateContainerd,
    make_busybox_rootfs,
    mounts_under,
)

E2E_DIR = Path(__file__).resolve().parent

#: Executables the harness needs.
REQUIRED_TOOLS = ("containerd", "ctr")


def in_ci() -> bool:
    """Whether we run under CI (``CI`` set to a true-ish value), where skipping is an error."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def e2e_unavailable_reason(
    tools: tuple[str, ...] = REQUIRED_TOOLS, files: tuple[str, ...] = ()
) -> str | None:
    """Why the e2e tests cannot run on this machine, or None if they can.

    ``tools`` must be on PATH and ``files`` must exist, besides running as root.
    """
    if os.geteuid() != 0:
        return "e2e tests need root (they run containerd and runc)"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"e2e tests need {', '.join(missing)} on PATH (run scripts/setup)"
    absent = [path for path in files if not os.path.exists(path)]
    if absent:
        return f"e2e tests need {', '.join(absent)} (run scripts/setup)"
    return None


def require_e2e(tools: tuple[str, ...] = REQUIRED_TOOLS, files: tuple[str, ...] = ()) -> None:
    """Skip the calling test if it cannot run here, or fail it when under CI.

    Tests that need more than the harness call it with their extra needs, e.g.
    ``require_e2e(("containerd", "ctr", "runc"), ("/bin/busybox",))``.
    """
    reason = e2e_unavailable_reason(tools, files)
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory (or below) as ``e2e``."""
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _e2e_requirements() -> None:
    """Runs first for every e2e test: skip (or fail under CI) when it cannot run here."""
    require_e2e()


@pytest.fixture
def containerd() -> Iterator[PrivateContainerd]:
    """A started private containerd in a fresh temp dir; always stopped and removed after."""
    base_dir = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    daemon = PrivateContainerd(base_dir)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# ------------------------------------------------------------------ runtimes under test

REPO = E2E_DIR.parents[1]

#: Directory holding ``containerd-shim-pyshim-v1``; put first on containerd's PATH.
SHIM_BIN_DIR = REPO / "bin"

PYSHIM_RUNTIME = "io.containerd.pyshim.v1"
RUNC_V2_RUNTIME = "io.containerd.runc.v2"

#: What the shim tests need besides the harness.
BUSYBOX = "/bin/busybox"
SHIM_TOOLS = (*REQUIRED_TOOLS, "runc")

#: Where containerd 1.6 keeps the bundles of runtime-v2 tasks, below its ``state`` directory.
TASK_STATE_SUBDIR = "io.containerd.runtime.v2.task"

#: Substrings of a shim daemon's command line: runc-v2's binary, and our launcher (which
#: ``exec``s the venv's Python, so the binary name itself is not on the command line). A
#: process started with the shim flags ``-namespace`` and ``-id`` counts as a shim as well.
SHIM_CMDLINE_MARKERS = ("containerd-shim-", "pyshim.main")
#: In the command line of pyshim's warm fork-server (pyshim.shim.forkserver).
FORKSERVER_MARKER = "pyshim.shim.forkserver"


def reference_enabled() -> bool:
    """Whether ``PYSHIM_E2E_REFERENCE`` asks to run the task tests against runc-v2 as well."""
    return os.environ.get("PYSHIM_E2E_REFERENCE", "").strip().lower() in ("1", "true", "yes")


def runtimes_under_test() -> list[str]:
    """``io.containerd.pyshim.v1``, then ``io.containerd.runc.v2`` if the reference is on."""
    return [PYSHIM_RUNTIME, RUNC_V2_RUNTIME] if reference_enabled() else [PYSHIM_RUNTIME]


def _runtime_test_id(runtime: str) -> str:
    return {PYSHIM_RUNTIME: "pyshim", RUNC_V2_RUNTIME: "runc-v2"}.get(runtime, runtime)


@pytest.fixture(params=runtimes_under_test(), ids=_runtime_test_id)
def runtime(request: pytest.FixtureRequest) -> str:
    """The runtime name to pass to ``ctr run --runtime``."""
    name: str = request.param
    return name


def is_pyshim(runtime: str) -> bool:
    return runtime == PYSHIM_RUNTIME


def shim_path_env(path: str | None = None) -> str:
    """A PATH with :data:`SHIM_BIN_DIR` first, then ``path`` (default: this process's PATH)."""
    rest = os.environ.get("PATH", os.defpath) if path is None else path
    return f"{SHIM_BIN_DIR}{os.pathsep}{rest}" if rest else str(SHIM_BIN_DIR)


def start_shim_containerd(
    base_dir: Path | None = None, *, path: str | None = None
) -> PrivateContainerd:
    """A started :class:`PrivateContainerd` whose PATH is :func:`shim_path_env` (``path``).

    The caller must :meth:`~PrivateContainerd.stop` it (also when this raises: it is stopped
    here in that case).
    """
    if base_dir is None:
        base_dir = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    daemon = PrivateContainerd(base_dir, env={"PATH": shim_path_env(path)})
    try:
        daemon.start()
    except BaseException:
        daemon.stop()
        raise
    return daemon


@pytest.fixture
def shim_containerd() -> Iterator[PrivateContainerd]:
    """A started private containerd that resolves ``io.containerd.pyshim.v1`` (and runc-v2)."""
    require_e2e(SHIM_TOOLS, (BUSYBOX, str(SHIM_BIN_DIR / "containerd-shim-pyshim-v1")))
    daemon = start_shim_containerd()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def busybox_rootfs(shim_containerd: PrivateContainerd) -> Path:
    """A busybox rootfs (``<base_dir>/rootfs``) for ``ctr run --rootfs``."""
    return make_busybox_rootfs(shim_containerd.base_dir / "rootfs")


# ----------------------------------------------------------------------------- helpers


def unique_id(prefix: str) -> str:
    """A container id unique across concurrent test runs.

    runc's state (``/run/containerd/runc/<ns>/<id>``) and the cgroups (``/<ns>/<id>``) are
    shared by every containerd on the machine, so ids must not collide with another run's.
    """
    return f"{prefix}-{secrets.token_hex(4)}"


def wait_until(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout} s")
        time.sleep(0.05)


def bundle_dir(
    containerd: PrivateContainerd, container_id: str, namespace: str = "default"
) -> Path:
    """The bundle directory containerd 1.6 makes for a task (it holds the ``address`` file)."""
    return containerd.state / TASK_STATE_SUBDIR / namespace / container_id


def shim_address(containerd: PrivateContainerd, container_id: str) -> str:
    """The ``unix://...`` address recorded in the task's bundle (``address`` file)."""
    return (bundle_dir(containerd, container_id) / "address").read_text().strip()


def _daemon_pids(containerd: PrivateContainerd) -> set[int]:
    try:
        return {containerd.pid}
    except Exception:
        return set()


def subreaper_leftovers(containerd: PrivateContainerd) -> list[psutil.Process]:
    """Living processes below the subreaper other than containerd itself (shims, orphans).

    The warm fork-server (one per containerd, expected to stay) is not one, but the shim
    daemons it forked (its children) are.
    """
    try:
        children = psutil.Process(containerd.subreaper_pid).children()
    except psutil.NoSuchProcess:
        return []
    daemon = _daemon_pids(containerd)
    alive = []
    for child in children:
        if child.pid in daemon or not _alive(child):
            continue
        if FORKSERVER_MARKER in _cmdline(child):
            with contextlib.suppress(psutil.NoSuchProcess):
                alive += [daemon for daemon in child.children() if _alive(daemon)]
            continue
        alive.append(child)
    return alive


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def shim_processes(
    containerd: PrivateContainerd, container_id: str | None = None
) -> list[psutil.Process]:
    """The shim daemons of this containerd: children of its subreaper (daemonized shims are
    re-parented there) whose command line names a shim; with ``container_id``, only those
    started with ``-id <container_id>``. Identified by PID, never by name.
    """
    found = []
    for process in subreaper_leftovers(containerd):
        words = _cmdline(process).split()
        named = any(marker in word for word in words for marker in SHIM_CMDLINE_MARKERS)
        if not named and not {"-namespace", "-id"} <= set(words):
            continue
        if container_id is not None and not _has_id(words, container_id):
            continue
        found.append(process)
    return found


def _has_id(words: list[str], container_id: str) -> bool:
    return any(
        word in ("-id", "--id") and index + 1 < len(words) and words[index + 1] == container_id
        for index, word in enumerate(words)
    )


def task_list(
    containerd: PrivateContainerd, namespace: str = "default"
) -> dict[str, tuple[int, str]]:
    """``ctr task ls`` as {task id: (pid, STATUS)}."""
    output = containerd.ctr("task", "ls", namespace=namespace).stdout
    tasks: dict[str, tuple[int, str]] = {}
    for line in output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            tasks[fields[0]] = (int(fields[1]), fields[2])
    return tasks


def task_status(containerd: PrivateContainerd, container_id: str) -> str | None:
    """The task's STATUS column in ``ctr task ls`` (RUNNING, STOPPED, ...), None if absent."""
    entry = task_list(containerd).get(container_id)
    return None if entry is None else entry[1]


def wait_for_status(
    containerd: PrivateContainerd, container_id: str, status: str, timeout: float = 20.0
) -> None:
    """Wait until ``ctr task ls`` reports ``status`` for the task."""
    seen: list[str | None] = []

    def reached() -> bool:
        seen.append(task_status(containerd, container_id))
        return seen[-1] == status

    wait_until(reached, timeout, f"task {container_id} {status} (last seen: {seen[-1:]})")


def task_pids(containerd: PrivateContainerd, container_id: str) -> dict[int, str]:
    """``ctr task ps`` as {pid: INFO column} (INFO names the exec id of exec processes)."""
    output = containerd.ctr("task", "ps", container_id).stdout
    pids: dict[int, str] = {}
    for line in output.splitlines()[1:]:
        fields = line.split(maxsplit=1)
        if fields and fields[0].isdigit():
            pids[int(fields[0])] = fields[1] if len(fields) > 1 else ""
    return pids


def remove_container(containerd: PrivateContainerd, container_id: str) -> None:
    """Force-delete the task (if any) and the container (if any); errors ignored."""
    containerd.ctr("task", "rm", "-f", container_id, check=False)
    containerd.ctr("container", "rm", container_id, check=False)


def leftovers(
    containerd: PrivateContainerd, container_ids: Iterable[str] = (), namespace: str = "default"
) -> list[str]:
    """What the shims and containerd left behind that they should have removed."""
    problems: list[str] = []
    processes = subreaper_leftovers(containerd)
    if processes:
        problems.append(
            "processes left below the subreaper: "
            + "; ".join(f"{p.pid} {_cmdline(p)!r}" for p in processes)
        )
    tasks_dir = containerd.state / TASK_STATE_SUBDIR
    bundles = sorted(str(path) for path in tasks_dir.glob("*/*"))
    if bundles:
        problems.append(f"bundle directories left: {bundles}")
    mounts = mounts_under(containerd.base_dir)
    if mounts:
        problems.append(f"mounts left below {containerd.base_dir}: {mounts}")
    for container_id in container_ids:
        socket = containerd.shim_socket_path(namespace, container_id)
        if socket.exists():
            problems.append(f"shim socket of {container_id} left: {socket}")
        runc_state = DEFAULT_RUNC_ROOT / namespace / container_id
        if runc_state.exists():
            problems.append(f"runc state of {container_id} left: {runc_state}")
    return problems


def assert_no_leftovers(
    containerd: PrivateContainerd,
    container_ids: Iterable[str] = (),
    timeout: float = 20.0,
    namespace: str = "default",
) -> None:
    """Wait (shims exit asynchronously after Shutdown) until nothing is left behind: no process
    below the subreaper but containerd, no bundle directory, no mount below base_dir, no shim
    socket or runc state for ``container_ids`` (in ``namespace``); AssertionError listing what
    remains otherwise.
    """
    ids = list(container_ids)
    problems: list[str] = []

    def clean() -> bool:
        problems[:] = leftovers(containerd, ids, namespace)
        return not problems

    deadline = time.monotonic() + timeout
    while not clean():
        if time.monotonic() > deadline:
            raise AssertionError("left behind after the test:\n" + "\n".join(problems))
        time.sleep(0.05)


def oci_spec(
    containerd: PrivateContainerd,
    rootfs: Path,
    args: list[str],
    *,
    container_id: str | None = None,
    annotations: dict[str, str] | None = None,
    env: list[str] | None = None,
) -> dict[str, Any]:
    """``ctr oci spec`` (containerd's default Linux spec), adapted: ``root.path`` = ``rootfs``,
    ``process.args``, ``process.env`` (PATH=/bin:/sbin by default), ``annotations``, and the
    cgroup path ``/default/<container_id>`` (as ``ctr run`` would set it) if given.
    """
    spec: dict[str, Any] = json.loads(containerd.ctr("oci", "spec").stdout)
    spec["root"] = {"path": str(rootfs)}
    spec["process"]["args"] = list(args)
    spec["process"]["env"] = list(env) if env is not None else ["PATH=/bin:/sbin"]
    if annotations:
        spec["annotations"] = dict(annotations)
    if container_id is not None:
        spec.setdefault("linux", {})["cgroupsPath"] = f"/default/{container_id}"
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec, indent=2))
    return path


def ctr_argv(containerd: PrivateContainerd, *args: str, namespace: str = "default") -> list[str]:
    """The argv :meth:`PrivateContainerd.ctr` runs, for commands started in the background."""
    return ["ctr", "--address", str(containerd.address), "--namespace", namespace, *args]


class BackgroundCtr:
    """A ``ctr`` command running in the background (see :func:`background_ctr`).

    Its stdout and stderr go to unlinked temporary files, not pipes: a pipe nobody reads yet
    would block ctr once full, and ctr (1.6) then loses the tail of the task's output (observed
    with runc-v2 as well as pyshim), which is not what the tests mean to check.
    """

    def __init__(self, argv: list[str]) -> None:
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr
        )

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for ctr to exit: (exit status, stdout, stderr)."""
        status = self.process.wait(timeout)
        return status, self._read(self._stdout), self._read(self._stderr)

    @staticmethod
    def _read(file: IO[bytes]) -> str:
        file.seek(0)
        return file.read().decode(errors="replace")

    def close(self) -> None:
        """Kill ctr by PID if it still runs, reap it, close the files."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stdout.close()
        self._stderr.close()


@contextlib.contextmanager
def background_ctr(containerd: PrivateContainerd, *args: str) -> Iterator[BackgroundCtr]:
    """Start ``ctr ARGS...`` without waiting (stdin from /dev/null, output captured to files);
    on exit it is killed by PID if it still runs, and reaped.
    """
    command = BackgroundCtr(ctr_argv(containerd, *args))
    try:
        yield command
    finally:
        command.close()


def finish(command: BackgroundCtr, timeout: float = 60.0) -> tuple[int, str, str]:
    """Wait for a :func:`background_ctr` command: (exit status, stdout, stderr)."""
    return command.finish(timeout)


#: The ttrpc service name tests call directly.
TASK = "containerd.task.v2.Task"
ResultT = TypeVar("ResultT")


def call_shim(address: str, scenario: Callable[[Client], Awaitable[ResultT]]) -> ResultT:
    """Connect to a shim's ttrpc socket and return what ``scenario`` does with the client."""

    async def main() -> ResultT:
        async with await Client.connect(address, timeout=10) as client:
            return await scenario(client)

    return uvloop.run(main())
