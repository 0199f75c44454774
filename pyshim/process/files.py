"""Where the engine keeps a container's files, and how it records exits: a front end's choice.

`ContainerFiles` is what the process layer asks for (runtime pid files, exec process JSON,
output spools) and tells (an exit at reap time, an exec forgotten, the container created).
`BundleFiles` is containerd's layout (the bundle's init.pid, init.exit, execs/, spool/,
shim.pid, read back by `delete`); the conmon front end supplies its own (-p pid file,
--exec-process-spec, exit files written when it decides). Never raises for a record it could
not write: the caller logs OSError and carries on.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

from pyshim import bundle as bundle_files
from pyshim import durable
from pyshim.bundle import ExitRecord

__all__ = ["BundleFiles", "ContainerFiles", "ExitRecord"]


class ContainerFiles(Protocol):
    """A container's files. `exec_id` None means the init."""

    def pid_file(self, exec_id: str | None) -> str:
        """Where the runtime writes the process's pid (its directory exists)."""
        ...

    def exec_spec_file(self, exec_id: str) -> str:
        """Where the exec's process JSON is written for the runtime (a new file; removed after
        the runtime read it)."""
        ...

    def spool_dir(self, exec_id: str | None) -> str | None:
        """Where output waits while a FIFO has no reader (None: a private temporary name)."""
        ...

    def record_exit(self, exec_id: str | None, record: ExitRecord) -> None:
        """At reap time, before anything else: the exit as it happened (may raise OSError)."""
        ...

    def created(self, init_pid: int) -> None:
        """The init exists (the runtime wrote its pid); may raise OSError."""
        ...

    def forget_exec(self, exec_id: str) -> None:
        """The exec was deleted: its files go (never raises)."""
        ...


class BundleFiles:
    """containerd's layout in `<bundle>` (ids are validated before they get here)."""

    def __init__(self, bundle: str) -> None:
        self.bundle = bundle

    def pid_file(self, exec_id: str | None) -> str:
        if exec_id is None:
            return os.path.join(self.bundle, "init.pid")
        return os.path.join(self._exec_dir(), f"{exec_id}.pid")

    def exec_spec_file(self, exec_id: str) -> str:
        return os.path.join(self._exec_dir(), f"{exec_id}.json")

    def spool_dir(self, exec_id: str | None) -> str | None:
        # "exec-<id>": an exec may be called like the container.
        return os.path.join(self.bundle, "spool", "init" if exec_id is None else f"exec-{exec_id}")

    def record_exit(self, exec_id: str | None, record: ExitRecord) -> None:
        # Written now (no crash of the shim or of containerd can lose it from here on), fsynced
        # off the loop right after: the exit's event and Wait reply need not wait for the disk.
        path = bundle_files.exit_record_path(self.bundle, exec_id)
        bundle_files.write_exit_record(path, record, durable=False)
        durable.sync_later(bundle_files.make_durable, path)

    def created(self, init_pid: int) -> None:
        bundle_files.write_shim_pid(self.bundle, os.getpid())
        durable.prepare()  # record_exit's fsync worker, before any exit needs it

    def forget_exec(self, exec_id: str) -> None:
        directory = bundle_files.exec_dir(self.bundle)
        for suffix in (".pid", ".exit", ".json"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, exec_id + suffix))

    def _exec_dir(self) -> str:
        directory = bundle_files.exec_dir(self.bundle)
        os.makedirs(directory, mode=0o711, exist_ok=True)
        return directory
