"""One picture of pyshim on this host: every registered shim (asked over its socket when it
answers, else read from the records it left), its containers and processes, and the
fork-servers. Plain data, ready for a table or JSON (`pyshim ps`, `inspect`)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pyshim.logfmt import rfc3339_nano
from pyshim.ops import forkservers, query, records, registry
from pyshim.protos.pyshim.introspect.v1 import introspect_pb2

SERVING = "serving"
NOT_ANSWERING = "not answering"  # its process lives, its socket does not answer
GONE = "gone"  # its process is dead; what it left on disk is shown


@dataclass
class ProcessView:
    id: str
    kind: str  # init or exec
    pid: int
    status: str  # created, running, paused, stopped, ...; "unknown" when the shim is gone
    exit_status: int | None = None
    exited_at: str | None = None
    exited_at_ns: int | None = None
    oom: bool | None = None
    terminal: bool | None = None
    stdio: dict[str, str] | None = None
    problem: str = ""


@dataclass
class ContainerView:
    id: str
    namespace: str
    bundle: str
    status: str  # the init's status; "stopped (shim gone)" or "unknown (shim gone)"
    shim_pid: int
    shim_state: str
    address: str
    processes: list[ProcessView] = field(default_factory=list)


@dataclass
class ShimView:
    pid: int
    state: str
    namespace: str
    id: str
    address: str
    socket: str
    bundle: str
    started_at: str
    version: str = ""
    parent_pid: int = 0
    ttrpc_address: str = ""
    error: str = ""
    containers: list[ContainerView] = field(default_factory=list)


@dataclass
class Snapshot:
    taken_at: str
    run_dir: str
    shims: list[ShimView]
    forkservers: list[forkservers.ForkServer]

    def containers(self) -> list[ContainerView]:
        return [container for shim in self.shims for container in shim.containers]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def take(address: str | None = None, namespace: str | None = None,
         timeout: float = query.TIMEOUT) -> Snapshot:
    """The snapshot, optionally only the shims of one containerd address and/or namespace."""
    entries = sorted((entry for entry in registry.entries()
                      if (address is None or entry.address == address)
                      and (namespace is None or entry.namespace == namespace)),
                     key=lambda entry: (entry.address, entry.namespace, entry.started_at_ns))
    alive = [entry for entry in entries if _alive(entry.pid)]
    replies = asyncio.run(query.describe_all([entry.socket for entry in alive], timeout)) \
        if alive else []
    answers = dict(zip([entry.path for entry in alive], replies, strict=True))
    shims = []
    for entry in entries:
        reply = answers.get(entry.path)
        if isinstance(reply, introspect_pb2.DescribeResponse) and reply.shim.pid == entry.pid:
            shims.append(_from_reply(entry, reply))
        elif reply is not None:
            error = str(reply) if isinstance(reply, query.ShimUnreachable) else \
                f"another process ({reply.shim.pid}) answers on its socket"
            shims.append(_from_records(entry, NOT_ANSWERING, error))
        else:
            view = _from_records(entry, GONE, "")
            if view.containers or os.path.isdir(entry.bundle):
                shims.append(view)
            else:
                registry.forget(entry)  # dead, and containerd has removed its bundles
    servers = [server for server in forkservers.list_servers()
               if address is None or server.address in ("", address)]
    return Snapshot(taken_at=rfc3339_nano(time.time_ns()), run_dir=registry.run_dir(),
                    shims=shims, forkservers=servers)


def _alive(pid: int) -> bool:
    """pid is a living pyshim process (not a zombie, not a reused pid running else)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            command = cmdline.read()
    except (OSError, IndexError):
        return False
    return state != b"Z" and b"pyshim" in command


def _time(time_ns: int) -> str | None:
    return rfc3339_nano(time_ns) if time_ns > 0 else None


def _base(entry: registry.ShimEntry, state: str, error: str) -> ShimView:
    return ShimView(pid=entry.pid, state=state, namespace=entry.namespace, id=entry.id,
                    address=entry.address, socket=entry.socket, bundle=entry.bundle,
                    started_at=_time(entry.started_at_ns) or "", error=error)


def _from_reply(entry: registry.ShimEntry, reply: introspect_pb2.DescribeResponse) -> ShimView:
    shim = _base(entry, SERVING, "")
    shim.version = reply.shim.version
    shim.parent_pid = reply.shim.parent_pid
    shim.ttrpc_address = reply.shim.ttrpc_address
    for container in reply.containers:
        processes = [ProcessView(
            id=process.id, kind="init" if process.init else "exec", pid=process.pid,
            status=process.status,
            exit_status=process.exit_status if process.exited else None,
            exited_at=_time(process.exited_at_ns) if process.exited else None,
            exited_at_ns=process.exited_at_ns if process.exited else None,
            oom=process.oom_killed if process.exited else None, terminal=process.terminal,
            stdio={"stdin": process.stdin, "stdout": process.stdout, "stderr": process.stderr},
        ) for process in container.processes]
        init = next((process for process in processes if process.kind == "init"), None)
        shim.containers.append(ContainerView(
            id=container.id, namespace=entry.namespace, bundle=container.bundle,
            status=init.status if init else "unknown", shim_pid=entry.pid, shim_state=SERVING,
            address=entry.address, processes=processes))
    return shim


def _from_records(entry: registry.ShimEntry, state: str, error: str) -> ShimView:
    shim = _base(entry, state, error)
    for bundle in records.bundles_of(entry.socket, entry.bundle):
        recorded = records.read_container(bundle)
        processes = [ProcessView(
            id=process.id, kind="init" if process.init else "exec", pid=process.pid,
            status="stopped" if process.status is not None else "unknown",
            exit_status=process.status, exited_at=_time(process.exited_at_ns),
            exited_at_ns=process.exited_at_ns or None,
            oom=process.oom if process.status is not None else None, problem=process.problem,
        ) for process in recorded.processes]
        init = processes[0]
        shim.containers.append(ContainerView(
            id=recorded.id, namespace=entry.namespace, bundle=bundle,
            status=f"{init.status} (shim {state})", shim_pid=entry.pid, shim_state=state,
            address=entry.address, processes=processes))
    return shim
