"""What a shim left on disk: its containers' bundles and their exit records (`init.exit`,
`execs/<exec id>.exit`, written by the daemon at reap time). Read when the shim is gone, or to
add what a live shim no longer holds. Reads only; ids from file names are validated."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyshim import bundle as bundle_files
from pyshim.identifiers import InvalidIdentifier, validate


@dataclass(frozen=True)
class RecordedProcess:
    id: str
    init: bool
    pid: int
    status: int | None  # None: no record (it had not exited, or the record is unusable)
    exited_at_ns: int
    oom: bool
    problem: str = ""  # why a record exists but cannot be trusted


@dataclass(frozen=True)
class RecordedContainer:
    id: str
    bundle: str
    processes: list[RecordedProcess]


def bundles_of(shim_socket: str, first_bundle: str) -> list[str]:
    """The bundles a shim served: those beside its first one whose `address` file names its
    socket (containerd puts a namespace's bundles in one directory; grouped containers share
    a shim, hence an address)."""
    parent = os.path.dirname(first_bundle.rstrip("/"))
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    found = []
    for name in names:
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, bundle_files.ADDRESS), encoding="utf-8") as address:
                if address.read().strip() == shim_socket:
                    found.append(path)
        except OSError:
            continue
    return found


def read_container(bundle: str) -> RecordedContainer:
    """The container of a bundle as its records tell it: the init, then every exec that
    left a pid file or an exit record."""
    container_id = os.path.basename(bundle.rstrip("/"))
    processes = [_process(container_id, True, bundle_files.exit_record_path(bundle),
                          os.path.join(bundle, "init.pid"))]
    exec_ids: set[str] = set()
    try:
        for name in os.listdir(bundle_files.exec_dir(bundle)):
            stem, dot, suffix = name.rpartition(".")
            if dot and suffix in ("exit", "pid"):
                exec_ids.add(stem)
    except OSError:
        pass
    for exec_id in sorted(exec_ids):
        try:
            validate(exec_id, "exec id")
        except InvalidIdentifier:
            continue
        processes.append(_process(
            exec_id, False, bundle_files.exit_record_path(bundle, exec_id),
            os.path.join(bundle_files.exec_dir(bundle), exec_id + ".pid")))
    return RecordedContainer(container_id, bundle, processes)


def _process(process_id: str, init: bool, record_path: str, pid_path: str) -> RecordedProcess:
    try:
        pid = bundle_files.read_pid(pid_path)
    except (OSError, ValueError):
        pid = 0
    try:
        record = bundle_files.read_exit_record(record_path)
    except bundle_files.CorruptRecord as error:
        return RecordedProcess(process_id, init, pid, None, 0, False, str(error))
    if record is None:
        return RecordedProcess(process_id, init, pid, None, 0, False)
    return RecordedProcess(process_id, init, record.pid or pid, record.status,
                           record.exited_at_ns, record.oom)
