"""A container's exec processes: added, spawned through the runtime, forgotten (spec §3.4).

Part of Container (a mixin: the state it reads is the container's own). The state checks are
the process states'; this half owns the runtime call, the exec's stdio and its files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from pyshim.bundle import read_pid
from pyshim.errors import (
    AlreadyExists,
    EngineError,
    FailedPrecondition,
    NotFound,
    RuntimeFailed,
)
from pyshim.io import IOContext, ProcessIO, StdioConfig
from pyshim.process.base import Process
from pyshim.process.exec import ExecDeleted, ExecProcess
from pyshim.process.support import open_io, runtime_error
from pyshim.runtime import OCIRuntimeError

if TYPE_CHECKING:
    from pyshim.process.config import ContainerConfig
    from pyshim.process.container import Container
    from pyshim.process.files import ContainerFiles
    from pyshim.process.init import InitProcess
    from pyshim.reaper import Reaper
    from pyshim.runtime import OCIRuntime

# Delete waits this long for the output relays to reach EOF (spec §6.6: runc-v2 uses 2 s).
DELETE_DRAIN_TIMEOUT = 2.0


class ExecManagement:
    """The exec half of a Container."""

    id: str
    bundle: str
    config: ContainerConfig
    files: ContainerFiles
    reaper: Reaper
    runtime: OCIRuntime
    init: InitProcess
    execs: dict[str, ExecProcess]
    _exec_starts: int
    _exec_change: asyncio.Event

    def _watch(self, process: Process, since: int) -> None:
        raise NotImplementedError  # ExitReporting's

    def io_context(self, exec_id: str | None) -> IOContext:
        process_id = self.id if exec_id is None else exec_id
        return IOContext(
            process_id=process_id, namespace=self.config.namespace, reaper=self.reaper,
            cwd=self.bundle, uid=self.config.io_uid, gid=self.config.io_gid,
            name=f"{self.id}/{process_id}", spool_dir=self.files.spool_dir(exec_id),
            spool_max=self.config.spool_max,
        )

    def add_exec(self, exec_id: str, stdio: StdioConfig, spec: Mapping[str, Any] | None = None,
                 *, spec_file: str | None = None, io: ProcessIO | None = None) -> ExecProcess:
        """Record an exec (spawned by its start). `spec`: the OCI process JSON (its
        `terminal` is set from stdio); or `spec_file`: a process JSON file that exists already
        and is used as it is (conmon's --exec-process-spec). `io` replaces the I/O that
        `stdio` would open (a front end relaying to its own sinks)."""
        if exec_id in self.execs:
            raise AlreadyExists(f"container {self.id}: id {exec_id}", container_id=self.id,
                                process_id=exec_id)
        self.init.state.check_exec()
        process = ExecProcess(cast("Container", self), exec_id, stdio, ProcessIO())
        process.spec = dict(spec) if spec is not None else None
        process.spec_file = spec_file
        process.given_io = io
        self.execs[exec_id] = process
        return process

    async def runtime_start_exec(self, process: ExecProcess) -> None:
        """`runtime exec --detach` (ExecCreated.start)."""
        if self.init.reaped:
            raise FailedPrecondition(f"container {self.id} init process is not running",
                                     container_id=self.id, process_id=process.id)
        spec: dict[str, Any] | None = None
        if process.spec is not None:
            spec = dict(process.spec)
            spec["terminal"] = process.stdio.terminal
        process.io = process.given_io or await open_io(
            process.stdio, self.io_context(process.id), self.id, process.id)
        pid_file = self.files.pid_file(process.id)
        spec_path = process.spec_file or self.files.exec_spec_file(process.id)
        since = self.reaper.sequence
        self._exec_starts += 1
        try:
            try:
                await self.runtime.exec(
                    self.id, spec, pid_file, process.io.runtime_stdio(),
                    console_socket=process.io.console_socket, spec_path=spec_path,
                )
                process.pid = read_pid(pid_file)
            except OCIRuntimeError as error:
                failure = runtime_error(process, "OCI runtime exec failed", error)
                if isinstance(failure, RuntimeFailed):
                    failure.stderr = process.io.unread_stderr()
                raise failure from error
            except (OSError, ValueError) as error:
                raise EngineError(f"{process.label}: runc exec left no usable pid file: {error}",
                                  **process.names, cause=str(error)) from error
            await process.io.start()
        except BaseException:
            await process.io.close()
            raise
        finally:
            self._exec_starts -= 1
            self._exec_change.set()
        self._watch(process, since)

    async def forget_exec(self, process: ExecProcess, drain_timeout: float = DELETE_DRAIN_TIMEOUT
                          ) -> None:
        """Everything the exec held goes: relays, fds, spool, its files."""
        if not process.reaped and process.watcher is not None:
            process.watcher.cancel()  # never started, or its exit is no longer news
        try:
            await process.io.close(drain_timeout)
        finally:
            self.files.forget_exec(process.id)
            if self.execs.get(process.id) is process:
                del self.execs[process.id]
            process.release_waiters(
                NotFound(f"{process.label}: process was deleted before it exited",
                         **process.names))
            self._exec_change.set()

    async def _discard_exec(self, process: ExecProcess) -> None:
        await self.forget_exec(process, 0.0)
        process.transition(ExecDeleted(process))

    def process(self, exec_id: str) -> Process:
        """The init ("") or the exec of that id (NotFound)."""
        if not exec_id:
            return self.init
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFound(f"container {self.id}: process does not exist {exec_id}",
                           container_id=self.id, process_id=exec_id)
        return process
