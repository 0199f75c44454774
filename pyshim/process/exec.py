"""Exec processes and their states: created → running → stopped → deleted (spec §3.4).

An exec is only recorded by Exec and spawned by Start; it is signalled directly by pid (no
runc), never after it was reaped, so a reused pid is never hit.
"""

from __future__ import annotations

from typing import Any

from pyshim.errors import FailedPrecondition, NotFound
from pyshim.io import ProcessIO
from pyshim.process.base import Process, ProcessState, Status


class ExecProcess(Process):
    # The OCI process JSON from Exec, spawned by Start (runc exec --process); or None and
    # `spec_file` names a process JSON file written by the front end's caller.
    spec: dict[str, Any] | None = None
    spec_file: str | None = None
    # The front end's own I/O for it (add_exec(io=…)); None: opened from `stdio` at start.
    given_io: ProcessIO | None = None

    def _initial_state(self) -> ProcessState:
        return ExecCreated(self)

    def stopped_state(self) -> ProcessState:
        return ExecStopped(self)

    @property
    def status(self) -> Status:
        # An exec's status follows its container while that is paused or pausing.
        own = self.state.status
        init = self.container.init.status
        if own is Status.RUNNING and init in (Status.PAUSED, Status.PAUSING):
            return init
        return own



class ExecCreated(ProcessState):
    status = Status.CREATED

    async def start(self) -> None:
        assert isinstance(self.process, ExecProcess)
        await self.process.container.runtime_start_exec(self.process)
        if self.process.state is self:
            self.process.transition(ExecRunning(self.process))

    async def delete(self) -> None:
        assert isinstance(self.process, ExecProcess)
        await self.process.container.forget_exec(self.process)
        self.process.transition(ExecDeleted(self.process))

    async def kill(self, signal: int, all_processes: bool) -> None:
        raise FailedPrecondition(f"{self.process.label}: process not created",
                                 **self.process.names)


class ExecRunning(ProcessState):
    status = Status.RUNNING

    async def kill(self, signal: int, all_processes: bool) -> None:
        assert isinstance(self.process, ExecProcess)
        self.process.signal(signal)


class ExecStopped(ProcessState):
    status = Status.STOPPED

    async def delete(self) -> None:
        assert isinstance(self.process, ExecProcess)
        await self.process.container.forget_exec(self.process)
        self.process.transition(ExecDeleted(self.process))

    async def kill(self, signal: int, all_processes: bool) -> None:
        raise NotFound(f"{self.process.label}: process already finished", **self.process.names)

    def exited(self) -> None:
        pass


class ExecDeleted(ProcessState):
    status = Status.STOPPED

    async def start(self) -> None:
        self.gone()

    async def delete(self) -> None:
        self.gone()

    async def kill(self, signal: int, all_processes: bool) -> None:
        self.gone()

    def exited(self) -> None:
        pass
