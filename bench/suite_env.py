"""``bench.suite``'s set-up: the three configurations it compares, one private containerd that
serves them all, and who is a shim process of which configuration.

* ``pyshim``: ``io.containerd.pyshim.v1``, start asks the warm fork-server for its daemon;
* ``pyshim-cold``: ``io.containerd.pyshimcold.v1``, which containerd resolves to a wrapper
  ``containerd-shim-pyshimcold-v1`` (first on its PATH) that runs the same shim with
  ``PYSHIM_FORKSERVER=0``: start forks its own daemon, as before the fork-server;
* ``runc-v2``: ``io.containerd.runc.v2``, the Go reference.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import PYSHIM, RUNC_V2, SHORT, private_containerd
from bench.lifecycle import container_pids, shim_tree_pids
from tests.e2e.conftest import (
    FORKSERVER_MARKER,
    SHIM_BIN_DIR,
    shim_processes,
    task_list,
)
from tests.e2e.containerd import (
    CtrError,
    PrivateContainerd,
)

PYSHIM_COLD = "io.containerd.pyshimcold.v1"
#: bench.stdout_relay names runtimes with SHORT in its error messages: it must know ours.
SHORT.setdefault(PYSHIM_COLD, "pyshim-cold")
SHIM_BINARY = SHIM_BIN_DIR / "containerd-shim-pyshim-v1"
COLD_WRAPPER_NAME = "containerd-shim-pyshimcold-v1"


class BenchError(RuntimeError):
    """A step of the suite failed: the suite stops with this message."""


class NotForked(BenchError):
    """A pyshim daemon was not forked by the fork-server (a cold start: e.g. the code changed,
    so the fork-server was stale and replaced)."""


@dataclass(frozen=True)
class Config:
    """One compared configuration: a short name and the runtime name ``ctr`` is given."""

    name: str
    runtime: str
    #: Whether its daemons must come from the fork-server (True), must not (False), or it
    #: has none (None: runc-v2).
    forkserver: bool | None


CONFIGS = (
    Config("pyshim", PYSHIM, True),
    Config("pyshim-cold", PYSHIM_COLD, False),
    Config("runc-v2", RUNC_V2, None),
)
REFERENCE = CONFIGS[2]


def write_cold_wrapper(directory: Path) -> Path:
    """``directory/containerd-shim-pyshimcold-v1``: the repo's shim with the fork-server off."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / COLD_WRAPPER_NAME
    wrapper.write_text(
        "#!/bin/sh\n"
        "# bench.suite: pyshim with the warm fork-server disabled (cold start).\n"
        f"PYSHIM_FORKSERVER=0 exec {shlex.quote(str(SHIM_BINARY))} \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return wrapper


def suite_containerd(
    container_ids: Collection[str], namespace: str = "default"
) -> contextlib.AbstractContextManager[tuple[PrivateContainerd, Path]]:
    """:func:`bench.common.private_containerd` with the cold wrapper first on its PATH (so
    ``io.containerd.pyshimcold.v1`` resolves), then the repo's ``bin/``."""
    return private_containerd(container_ids, namespace, wrappers=write_cold_wrapper)


# ------------------------------------------------------------------------- shim processes


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return ""


def forkservers(containerd: PrivateContainerd) -> list[psutil.Process]:
    """The pyshim fork-server(s) of this containerd (children of its subreaper)."""
    try:
        children = psutil.Process(containerd.subreaper_pid).children()
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if FORKSERVER_MARKER in _cmdline(child)]


def _parent_pid(process: psutil.Process) -> int | None:
    try:
        return process.ppid()
    except psutil.NoSuchProcess:
        return None


def check_origin(
    containerd: PrivateContainerd, config: Config, daemons: list[psutil.Process]
) -> None:
    """That ``config``'s daemons were (pyshim) or were not (pyshim-cold) forked by the
    fork-server; BenchError otherwise (the figures would be of the wrong configuration)."""
    if config.forkserver is None:
        return
    server_pids = {server.pid for server in forkservers(containerd)}
    for daemon in daemons:
        parent = _parent_pid(daemon)
        forked = parent in server_pids
        if forked != config.forkserver:
            raise (NotForked if config.forkserver else BenchError)(
                f"{config.name}: shim daemon {daemon.pid} ({_cmdline(daemon)!r}) has parent "
                f"{parent}, fork-server(s) {sorted(server_pids) or 'none'}: it was "
                + ("not " if config.forkserver else "")
                + "forked by the fork-server"
            )


def daemons_of(containerd: PrivateContainerd, container_ids: Collection[str]) -> list[
        psutil.Process]:
    """The shim daemons serving these containers (one each: ctr sets no group label)."""
    found = []
    for container_id in container_ids:
        shims = shim_processes(containerd, container_id)
        if len(shims) != 1:
            raise BenchError(f"expected one shim daemon for {container_id}, found "
                             f"{[(shim.pid, _cmdline(shim)) for shim in shims]}")
        found.append(shims[0])
    return found


@dataclass(frozen=True)
class Memory:
    """PSS and RSS in KiB summed over a set of processes."""

    pss_kib: int
    rss_kib: int
    processes: int


def rollup(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in KiB from /proc/PID/smaps_rollup; (0, 0) if the process is gone."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0
    return pss, rss


def shim_pids(
    containerd: PrivateContainerd, config: Config, container_ids: Collection[str]
) -> set[int]:
    """Every shim process serving these containers: the daemons and their helpers (never the
    containers' processes, runc, containerd or ctr), plus the fork-server for ``pyshim``.
    Checks that each container has one daemon, forked the right way.

    The containers' own processes are found through ``ctr task ls``, for which containerd
    asks every shim for its State: a call that writes pages in each shim (for pyshim, the
    reference counts of the code it runs, which undoes KSM's merging of those pages). So
    look the processes up before the shims settle, not right before measuring them."""
    daemons = daemons_of(containerd, container_ids)
    check_origin(containerd, config, daemons)
    try:
        tasks = task_list(containerd)
    except CtrError as error:
        raise BenchError(f"{config.name}: ctr task ls failed: {error}") from None
    in_containers: set[int] = set()
    for container_id in container_ids:
        if container_id not in tasks:
            raise BenchError(f"{config.name}: task {container_id} is not in ctr task ls")
        in_containers |= container_pids(tasks[container_id][0])
    pids = shim_tree_pids(daemons, in_containers)
    if config.forkserver:
        servers = forkservers(containerd)
        if len(servers) != 1:
            raise BenchError(f"{config.name}: expected one fork-server, found "
                             f"{[server.pid for server in servers]}")
        pids.add(servers[0].pid)
    return pids


def memory_of(pids: Collection[int]) -> Memory:
    """PSS and RSS summed over these processes; BenchError if one is gone."""
    pss = rss = 0
    for pid in pids:
        one_pss, one_rss = rollup(pid)
        if one_rss == 0:
            raise BenchError(f"shim process {pid} is gone (or has no memory) at measurement")
        pss += one_pss
        rss += one_rss
    return Memory(pss, rss, len(pids))
