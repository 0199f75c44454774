"""What a front end decides for one container, what it is told back, and reading the bundle.

`ContainerConfig` (runtime invocation, io owner, spool limit) is filled by each front end: the
containerd shim from runc Options, the conmon monitor from its argv, `pyshim run` from its
flags. `Listener` is how a Container reports what happened. Nothing here runs anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pyshim.errors import InvalidInput
from pyshim.io.spool import DEFAULT_SPOOL_MAX
from pyshim.runtime import RuntimeConfig

if TYPE_CHECKING:
    from pyshim.process.base import Process
    from pyshim.process.container import Container


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """How one container is run and its output held."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # Owner of the FIFOs/files created for its stdio (-1: unchanged).
    io_uid: int = -1
    io_gid: int = -1
    # Bytes of output held per stream while a FIFO has no reader.
    spool_max: int = DEFAULT_SPOOL_MAX
    # Told to binary:// logging binaries (containerd's namespace; "" elsewhere).
    namespace: str = ""
    # Create's one-shot work (config.json, rootfs mounts, `runtime create`, its pid file and
    # cgroup) in a short-lived child forked for it, whose copied pages die with it
    # (process/oneshot.py). Not with pass_fds/preserve_fds or a restore.
    create_in_child: bool = False


class Listener(Protocol):
    """What the container reports as it happens (containerd: events; conmon: sync messages,
    exit and OOM files). Called on the event loop; must not block."""

    def process_started(self, process: Process) -> None:
        """Start (init or exec) succeeded; `process.pid` is set."""
        ...

    def process_exited(self, process: Process) -> None:
        """The exit, after the process's last output was relayed (bounded) and, for the init,
        after every exec's exit; `process.exit_status`/`exited_at_ns` are set."""
        ...

    def container_oom(self, container: Container) -> None:
        """The container's cgroup saw an OOM kill."""
        ...


def read_spec(bundle: str, container_id: str) -> dict[str, Any]:
    """The bundle's config.json (InvalidInput when it is missing or not a JSON object)."""
    path = os.path.join(bundle, "config.json")
    check_bundle(bundle, container_id)
    try:
        with open(path, "rb") as config:
            spec = json.load(config)
    except FileNotFoundError as error:
        raise InvalidInput(
            f"container {container_id}: bundle {bundle} has no config.json",
            container_id=container_id,
        ) from error
    except (OSError, ValueError) as error:
        raise InvalidInput(
            f"container {container_id}: cannot read {path}: {error}",
            container_id=container_id, cause=str(error),
        ) from error
    if not isinstance(spec, dict):
        raise InvalidInput(f"container {container_id}: {path} is not a JSON object",
                           container_id=container_id)
    return spec


def check_bundle(bundle: str, container_id: str) -> None:
    """InvalidInput when the bundle directory does not exist."""
    if not os.path.isdir(bundle):
        raise InvalidInput(f"container {container_id}: bundle {bundle} does not exist",
                           container_id=container_id)


def has_private_pid_namespace(spec: Mapping[str, Any]) -> bool:
    """A `pid` namespace entry without a path: the kernel kills every process when the init
    dies. Otherwise (host's or another container's) we must kill them ourselves."""
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return any(
        isinstance(entry, dict) and entry.get("type") == "pid" and not entry.get("path")
        for entry in namespaces
    )
