"""A private podman (Debian's 4.3) for the monitor tests: its own config, storage and processes.

:class:`PrivatePodman` runs ``podman`` with a test-local ``CONTAINERS_CONF`` made from
``deploy/podman/containers.conf`` (the snippet users copy) with ``conmon_path`` set to the
monitor under test (the real ``/usr/bin/conmon`` or pyshim's ``bin/pyshim-conmon``) and test-local
paths added, and a ``CONTAINERS_STORAGE_CONF`` with a private graphroot and runroot. Nothing of
the host's default storage (``/var/lib/containers``, ``/run/containers``, ``/run/libpod``, the
shm lock segment) is used. Every podman command runs below a child subreaper
(:mod:`tests.e2e.spawning`), which reaps the monitors once they daemonize. :meth:`stop` removes
the containers, kills what is left by PID, unmounts, deletes runc state and cgroups of its own
containers and removes its directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.containerd import (
    cgroup_hierarchies,
    delete_runc_containers,
    make_busybox_rootfs,
    unmount_all_below,
)
from tests.e2e.spawning import Spawned, SpawnServer

REPO = Path(__file__).resolve().parents[2]
#: The containers.conf snippet of the README; the tests start from it.
DEPLOY_CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
REAL_CONMON = Path("/usr/bin/conmon")
PYSHIM_CONMON = REPO / "bin" / "pyshim-conmon"
#: Monitor name -> the binary podman gets as ``conmon_path``.
MONITOR_PATHS = {"conmon": REAL_CONMON, "pyshim": PYSHIM_CONMON}
#: The switch: which monitors the podman tests run with (comma-separated names).
MONITORS_VARIABLE = "PYSHIM_TEST_MONITORS"
#: runc's default state root for a rootful podman (it passes no ``--root``).
PODMAN_RUNC_ROOT = Path("/run/runc")
#: Where podman's cgroupfs manager puts containers (``<hierarchy>/libpod_parent/libpod-<id>``).
CGROUP_PARENT = "libpod_parent"
#: podman refuses a runroot longer than this.
MAX_RUNROOT = 50
#: The ulimits root here cannot raise (no CAP_SYS_RESOURCE): podman's defaults would fail.
DEFAULT_ULIMITS = ["nofile=20000:20000", "nproc=32768:32768"]

TomlValue = str | int | bool | list[str]


def toml_text(tables: dict[str, dict[str, TomlValue]]) -> str:
    """A TOML document of flat tables (strings, integers, booleans, lists of strings)."""

    def value(item: TomlValue) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int):
            return str(item)
        if isinstance(item, list):
            return "[" + ", ".join(json.dumps(word) for word in item) + "]"
        return json.dumps(item)

    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {value(item)}" for key, item in keys.items()]
        lines.append("")
    return "\n".join(lines)


def monitors_under_test() -> list[str]:
    """Names from :data:`MONITORS_VARIABLE` (default: both, the real conmon and pyshim's, in
    the same run: the scenarios assert they behave alike)."""
    words = os.environ.get(MONITORS_VARIABLE, "conmon,pyshim").replace(",", " ").split()
    unknown = [word for word in words if word not in MONITOR_PATHS]
    if unknown:
        raise ValueError(f"{MONITORS_VARIABLE}: unknown monitor(s) {unknown}; "
                         f"known: {sorted(MONITOR_PATHS)}")
    return words


def deployed_containers_conf() -> dict[str, dict[str, TomlValue]]:
    """``deploy/podman/containers.conf``, parsed."""
    parsed: dict[str, dict[str, TomlValue]] = tomllib.loads(DEPLOY_CONTAINERS_CONF.read_text())
    return parsed


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class PodmanError(RuntimeError):
    pass


class PrivatePodman:
    """podman with everything under ``base_dir`` (keep it short: the runroot is below it).

    Paths: ``graphroot`` ``g``, ``runroot`` ``r``, podman's ``tmp_dir`` ``t`` (exit files,
    file locks), ``static_dir`` ``g/libpod``, events file ``events.log``, the busybox
    ``rootfs`` for ``--rootfs``, and the two config files. ``monitor`` is the conmon binary.
    """

    def __init__(self, base_dir: Path, monitor: Path) -> None:
        self.base_dir = Path(os.path.realpath(base_dir))
        self.monitor = monitor
        self.graphroot = self.base_dir / "g"
        self.runroot = self.base_dir / "r"
        self.tmp_dir = self.base_dir / "t"
        self.static_dir = self.graphroot / "libpod"
        self.network_dir = self.base_dir / "net"
        self.home = self.base_dir / "home"
        self.rootfs = self.base_dir / "rootfs"
        self.events_log = self.base_dir / "events.log"
        self.containers_conf_path = self.base_dir / "containers.conf"
        self.storage_conf_path = self.base_dir / "storage.conf"
        if len(str(self.runroot)) > MAX_RUNROOT:
            raise ValueError(f"runroot {self.runroot} is longer than {MAX_RUNROOT} characters")
        self.spawner = SpawnServer(self.base_dir / "spawn.sock", self.base_dir / "spawner.log")
        self._started = False
        self._stopped = False
        #: Containers seen by :meth:`stop` (for the harness test: their cgroups are gone).
        self.known_container_ids: set[str] = set()

    # ------------------------------------------------------------------------ configuration

    def containers_conf(self) -> dict[str, dict[str, TomlValue]]:
        """The deployed snippet with ``conmon_path`` = :attr:`monitor` and test-local settings."""
        tables = deployed_containers_conf()
        engine = dict(tables.get("engine", {}))
        engine.update(
            conmon_path=[str(self.monitor)],
            runtime="runc",  # crun refuses this machine's cgroup layout
            cgroup_manager="cgroupfs",
            events_logger="file",
            events_logfile_path=str(self.events_log),
            tmp_dir=str(self.tmp_dir),
            static_dir=str(self.static_dir),
            volume_path=str(self.graphroot / "volumes"),
            lock_type="file",  # not the host-wide /dev/shm/libpod_lock
            # The exit command (``podman container cleanup``) must find the same storage.
            conmon_env_vars=[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"CONTAINERS_STORAGE_CONF={self.storage_conf_path}",
                # pyshim's warm monitor-server on a socket of this podman's own (not the host's
                # /run/pyshim/conmon/monitor.sock): it dies with the fixture, files and all.
                f"PYSHIM_CONMON_SERVER={self.monitor_server_socket}",
            ],
        )
        containers = {**tables.get("containers", {}), "default_ulimits": DEFAULT_ULIMITS}
        network = {**tables.get("network", {}), "network_config_dir": str(self.network_dir)}
        return {**tables, "containers": containers, "network": network, "engine": engine}

    @property
    def monitor_server_socket(self) -> Path:
        """Where pyshim-conmon's warm monitor-server of this podman listens (conmon ignores it)."""
        return self.base_dir / "srv" / "monitor.sock"

    def storage_conf(self) -> dict[str, dict[str, TomlValue]]:
        return {"storage": {"driver": "overlay", "graphroot": str(self.graphroot),
                            "runroot": str(self.runroot)}}

    @property
    def env(self) -> dict[str, str]:
        """The whole environment of a podman command."""
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_RUNTIME_DIR": "",
            "TMPDIR": str(self.tmp_dir),
            "CONTAINERS_CONF": str(self.containers_conf_path),
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf_path),
        }

    # --------------------------------------------------------------------------- start/stop

    def start(self) -> None:
        if self._started:
            raise PodmanError("already started")
        self._started = True
        for directory in (self.base_dir, self.tmp_dir, self.network_dir, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        self.containers_conf_path.write_text(toml_text(self.containers_conf()))
        self.storage_conf_path.write_text(toml_text(self.storage_conf()))
        make_busybox_rootfs(self.rootfs)
        self.spawner.start()

    def stop(self, *, podman_rm: bool = True) -> None:
        """Remove every container (podman rm, unless ``podman_rm`` is false: the harness test
        checks the fallbacks that way), then SIGKILL by PID whatever runs below the
        subreaper, ``runc delete --force`` leftover containers, unmount everything below
        ``base_dir``, remove the containers' cgroups and ``base_dir``. Idempotent; every step
        runs even if an earlier one failed, and failures are raised together at the end."""
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []
        self.known_container_ids |= self._container_ids_on_disk()
        if podman_rm and self._started and self.spawner.descendants():
            with contextlib.suppress(Exception):
                self.run("rm", "--all", "--force", "--time", "0", timeout=60)
        self.spawner.stop(errors)
        delete_runc_containers(sorted(PODMAN_RUNC_ROOT.glob("*/state.json")), self.base_dir,
                               errors)
        unmount_all_below(self.base_dir, errors)
        self._remove_cgroups(errors)
        if self.base_dir.exists():
            try:
                shutil.rmtree(self.base_dir)
            except OSError as error:
                errors.append(f"removing {self.base_dir}: {error!r}")
        if errors:
            raise PodmanError("stopping the private podman:\n" + "\n".join(errors))

    def _container_ids_on_disk(self) -> set[str]:
        with contextlib.suppress(OSError):
            return {path.name for path in (self.graphroot / "overlay-containers").iterdir()
                    if len(path.name) == 64}
        return set()

    def _remove_cgroups(self, errors: list[str]) -> None:
        """rmdir ``libpod_parent/libpod-<id>`` of our containers (``libpod_parent`` and its
        shared ``conmon`` child stay: concurrent podmans use them)."""
        for hierarchy in cgroup_hierarchies():
            for container_id in self.known_container_ids:
                path = hierarchy / CGROUP_PARENT / f"libpod-{container_id}"
                if path.exists():
                    try:
                        path.rmdir()
                    except OSError as error:
                        errors.append(f"rmdir {path}: {error!r}")

    # ------------------------------------------------------------------------------ commands

    def argv(self, *args: str) -> list[str]:
        return ["podman", *args]

    def spawn(
        self, *args: str, stdio: Sequence[int] = (), ctty: bool = False
    ) -> Spawned:
        """``podman ARGS`` in the background with ``stdio`` (fds for 0, 1, 2) and, with
        ``ctty``, its stdin (a terminal) as the controlling terminal."""
        return self.spawner.spawn(
            self.argv(*args), env=self.env, cwd=self.base_dir, stdio=stdio, ctty=ctty
        )

    def run(
        self, *args: str, input: str | bytes | None = None, timeout: float = 120.0,
        check: bool = False,
    ) -> Result:
        """``podman ARGS``; output captured (to files, so a full pipe never blocks podman)."""
        data = input.encode() if isinstance(input, str) else input
        with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout, \
                tempfile.TemporaryFile() as stderr:
            if data is not None:
                stdin.write(data)
                stdin.seek(0)
                stdin_fd = stdin.fileno()
            else:
                stdin_fd = os.open(os.devnull, os.O_RDONLY)
            try:
                command = self.spawn(*args, stdio=(stdin_fd, stdout.fileno(), stderr.fileno()))
            finally:
                if data is None:
                    os.close(stdin_fd)
            try:
                code = command.wait(timeout)
            finally:
                command.close()
            stdout.seek(0)
            stderr.seek(0)
            result = Result(code, stdout.read().decode(errors="replace"),
                            stderr.read().decode(errors="replace"))
        if check and result.returncode != 0:
            raise PodmanError(f"podman {' '.join(args)}: exit {result.returncode}\n"
                              f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
        return result

    def container_args(self, *options: str) -> list[str]:
        """``OPTIONS --network none --rootfs <busybox>``: append the command to run."""
        return [*options, "--network", "none", "--rootfs", str(self.rootfs)]

    def detached(self, *command: str, options: Sequence[str] = ()) -> str:
        """``podman run -d OPTIONS --network none --rootfs <busybox> COMMAND``: its id."""
        result = self.run("run", "-d", *self.container_args(*options), *command, check=True)
        return result.stdout.strip()

    def logs(self, container: str) -> str:
        """``podman logs``' stdout."""
        return self.run("logs", container, check=True).stdout

    def inspect(self, container: str) -> dict[str, Any]:
        result = self.run("container", "inspect", container, check=True)
        documents: list[dict[str, Any]] = json.loads(result.stdout)
        return documents[0]

    def state(self, container: str) -> dict[str, Any]:
        state: dict[str, Any] = self.inspect(container)["State"]
        return state

    def exists(self, container: str) -> bool:
        return self.run("container", "exists", container).returncode == 0

    def bundle(self, container_id: str) -> Path:
        """The per-container static dir podman gives the monitor as its bundle (``-b``)."""
        return self.graphroot / "overlay-containers" / container_id / "userdata"

    def wait_until(
        self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not true within {timeout} s")
            time.sleep(0.1)
