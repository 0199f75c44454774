"""The shim registry: one small JSON file per live shim daemon under `<run dir>/shims/`, so
`pyshim ps` finds every shim without scanning /proc or dialling every socket in
/run/containerd/s (runc-v2's among them).

The daemon writes its entry when it starts serving and removes it when it exits; an entry
whose daemon was killed stays, and is how `ps` knows which bundles to read exit records from.
The run directory is `$PYSHIM_RUN_DIR` (default /run/pyshim), as for the fork-servers.
"""

from __future__ import annotations

import contextlib
import json
import os
from _json import encode_basestring_ascii  # json.dumps' own string encoder (C)
from dataclasses import dataclass

from pyshim import environ_table

RUN_DIR_VARIABLE = "PYSHIM_RUN_DIR"
DEFAULT_RUN_DIR = "/run/pyshim"
SUFFIX = ".json"


def run_dir() -> str:
    # Not os.environ.get: see environ_table (a daemon registers itself at start-up).
    return environ_table.get(RUN_DIR_VARIABLE) or DEFAULT_RUN_DIR


def registry_dir() -> str:
    return os.path.join(run_dir(), "shims")


@dataclass(frozen=True)
class ShimEntry:
    """What a shim registered about itself (everything `ps` needs to reach it or, once it is
    dead, to find its containers' bundles)."""

    pid: int
    socket: str  # unix://PATH
    namespace: str
    id: str
    address: str  # containerd's gRPC address
    bundle: str  # the bundle it was started in; grouped containers' bundles are siblings
    started_at_ns: int
    path: str = ""  # the entry's own file

    def to_json(self) -> str:
        return entry_json(self.pid, self.socket, self.namespace, self.id, self.address,
                          self.bundle, self.started_at_ns)


def entry_json(pid: int, socket: str, namespace: str, shim_id: str, address: str, bundle: str,
               started_at_ns: int) -> str:
    """What `json.dumps(fields, sort_keys=True)` gives for an entry, formatted directly: the
    daemon writes it at start-up, and json.dumps' encoder (Python code, run nowhere else in a
    daemon) would copy its code and objects into every daemon."""
    return (f'{{"address": {encode_basestring_ascii(address)}, '
            f'"bundle": {encode_basestring_ascii(bundle)}, '
            f'"id": {encode_basestring_ascii(shim_id)}, '
            f'"namespace": {encode_basestring_ascii(namespace)}, "pid": {int(pid)}, '
            f'"socket": {encode_basestring_ascii(socket)}, '
            f'"started_at_ns": {int(started_at_ns)}}}')


def entry_path(socket_path: str) -> str:
    """Named after the socket (itself a hash of address, namespace and group): unique."""
    return os.path.join(registry_dir(), os.path.basename(socket_path) + SUFFIX)


def register(entry: ShimEntry) -> str:
    """Write the entry (atomically: a reader sees all of it or nothing); returns its path."""
    directory = registry_dir()
    # Plain system calls on the usual path (directory there): every daemon runs this once, and
    # each Python function it runs is copied into that daemon's private memory.
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    path = entry_path(entry.socket.removeprefix("unix://"))
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        data = entry.to_json().encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def unregister(path: str, pid: int) -> None:
    """Remove our entry, unless another daemon (same socket, after us) has replaced it."""
    entry = read_entry(path)
    if entry is not None and entry.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def read_entry(path: str) -> ShimEntry | None:
    """The entry at `path`; None when it is gone or unreadable (being replaced, corrupt)."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return ShimEntry(
            pid=int(data["pid"]), socket=str(data["socket"]), namespace=str(data["namespace"]),
            id=str(data["id"]), address=str(data["address"]), bundle=str(data["bundle"]),
            started_at_ns=int(data.get("started_at_ns", 0)), path=path,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def entries() -> list[ShimEntry]:
    """Every registered shim, live or not, in a stable order."""
    try:
        names = sorted(os.listdir(registry_dir()))
    except FileNotFoundError:
        return []
    found = [read_entry(os.path.join(registry_dir(), name))
             for name in names if name.endswith(SUFFIX)]
    return [entry for entry in found if entry is not None]


def forget(entry: ShimEntry) -> None:
    """Remove the entry of a dead shim whose bundles are all gone (nothing left to show)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry.path)
