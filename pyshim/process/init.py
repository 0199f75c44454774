"""The container's init process and its states: created → running ⇄ paused → stopped → deleted.

Each state allows exactly the operations of spec §3.4 and refuses the rest with runc-v2's
words. The runc calls are the Container's; this module decides only what may happen when.
"""

from __future__ import annotations

from pyshim.process.base import Process, ProcessState, Status


class InitProcess(Process):
    is_init = True

    def _initial_state(self) -> ProcessState:
        return InitCreated(self)

    def stopped_state(self) -> ProcessState:
        return InitStopped(self)


class _InitState(ProcessState):
    """Init states share the base refusals; each subclass allows its own operations."""


class InitCreated(_InitState):
    status = Status.CREATED

    async def start(self) -> None:
        await self.process.container.runtime_start_init()
        self.process.transition(InitRunning(self.process))

    async def delete(self) -> None:
        await self.process.container.runtime_delete_init()
        self.process.transition(InitDeleted(self.process))

    async def kill(self, signal: int, all_processes: bool) -> None:
        await self.process.container.runtime_kill(signal, all_processes)

    async def pause(self) -> None:
        self.refuse("cannot pause task in created state")

    def check_exec(self) -> None:
        pass

    def check_update(self) -> None:
        pass


class InitRunning(_InitState):
    status = Status.RUNNING

    async def kill(self, signal: int, all_processes: bool) -> None:
        await self.process.container.runtime_kill(signal, all_processes)

    async def pause(self) -> None:
        self.process.transition(InitPausing(self.process))
        try:
            await self.process.container.runtime_pause()
        except BaseException:
            if isinstance(self.process.state, InitPausing):
                self.process.transition(self)
            raise
        if isinstance(self.process.state, InitPausing):
            self.process.transition(InitPaused(self.process))

    def check_exec(self) -> None:
        pass

    def check_update(self) -> None:
        pass


class InitPausing(InitRunning):
    """`runc pause` in progress; State reports PAUSING (spec §3.3.7)."""

    status = Status.PAUSING

    async def pause(self) -> None:
        self.refuse("cannot pause a pausing container")

    def check_exec(self) -> None:
        self.refuse("cannot exec in a pausing state")


class InitPaused(_InitState):
    status = Status.PAUSED

    async def kill(self, signal: int, all_processes: bool) -> None:
        await self.process.container.runtime_kill(signal, all_processes)

    async def pause(self) -> None:
        self.refuse("cannot pause a paused container")

    async def resume(self) -> None:
        await self.process.container.runtime_resume()
        self.process.transition(InitRunning(self.process))

    def check_update(self) -> None:
        pass


class InitStopped(_InitState):
    status = Status.STOPPED

    async def delete(self) -> None:
        await self.process.container.runtime_delete_init()
        self.process.transition(InitDeleted(self.process))

    async def kill(self, signal: int, all_processes: bool) -> None:
        # runc decides (kill --all after exit is accepted; a plain kill says "not running").
        await self.process.container.runtime_kill(signal, all_processes)

    def exited(self) -> None:
        pass


class InitDeleted(_InitState):
    # A deleted process reports "stopped" (spec §3.4); every operation says it is gone.
    status = Status.STOPPED

    async def start(self) -> None:
        self.gone()

    async def delete(self) -> None:
        self.gone()

    async def kill(self, signal: int, all_processes: bool) -> None:
        self.gone()

    async def pause(self) -> None:
        self.gone()

    async def resume(self) -> None:
        self.gone()

    def check_exec(self) -> None:
        self.gone()

    def check_update(self) -> None:
        self.gone()

    def exited(self) -> None:
        pass


class InitAdopted(_InitState):
    """The init of a container another monitor created and watches (conmon's exec sessions):
    running as far as we know; execs and runtime kills are allowed, its exit is not ours."""

    status = Status.RUNNING

    async def kill(self, signal: int, all_processes: bool) -> None:
        await self.process.container.runtime_kill(signal, all_processes)

    def check_exec(self) -> None:
        pass
