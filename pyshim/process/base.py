"""What init and exec processes share: identity, recorded exit, waiters, and the state base.

A process is always in exactly one state object; an operation the state does not allow raises
an engine error (pyshim.errors: WrongState, NotFound, …) naming the container, the process and
the reason. Operations on one process are serialised and run to completion even when their
caller goes away (operate()). Holds no runtime logic itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pyshim.errors import EngineError, NotFound, WrongState
from pyshim.io import ProcessIO, StdioConfig

if TYPE_CHECKING:
    from pyshim.process.container import Container

log = logging.getLogger("pyshim.process")
T = TypeVar("T")

#: How long a State waits for the operations in flight on its process (see `until_idle`).
STATE_WAIT_BOUND = 1.0

# Operations still running whose callers may be gone (a strong reference keeps them alive).
_OPERATIONS: set[asyncio.Task[Any]] = set()


class Status(Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


class Process:
    """State every process carries; the kind-specific work lives in the subclasses."""

    # What a process is comes from its class, never from comparing ids: an exec may have the
    # container's id.
    is_init = False

    def __init__(
        self, container: Container, process_id: str, stdio: StdioConfig, io: ProcessIO
    ) -> None:
        self.container = container
        self.id = process_id
        self.stdio = stdio
        self.io: ProcessIO = io
        self.pid = 0
        self.exit_status = 0
        self.exited_at_ns: int | None = None
        # Reaped (the pid is gone and may be reused) is earlier than exited (recorded and
        # reported after the output is drained).
        self.reaped = False
        self._exited = asyncio.Event()
        self._wait_error: EngineError | None = None
        self.state: ProcessState = self._initial_state()
        self._lock = asyncio.Lock()
        # The task that reports this process's exit, and whether a Start is still in flight
        # (the exit is reported after the start).
        self.watcher: asyncio.Task[None] | None = None
        self.start_done = asyncio.Event()
        self.start_done.set()

    def _initial_state(self) -> ProcessState:
        raise NotImplementedError

    def stopped_state(self) -> ProcessState:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How messages name this process: `container c1` or `container c1 exec e1`."""
        if self.is_init:
            return f"container {self.container.id}"
        return f"container {self.container.id} exec {self.id}"

    @property
    def names(self) -> dict[str, str]:
        """container_id and process_id ("" for the init), for an EngineError's fields."""
        return {"container_id": self.container.id,
                "process_id": "" if self.is_init else self.id}

    @property
    def status(self) -> Status:
        return self.state.status

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def operate(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` alone on this process and to its end, whatever the caller does.

        Once runc has been asked to do something, the record of what it did must be
        completed: a caller whose deadline passes or whose connection drops stops waiting,
        but the operation (in a task of its own, holding the lock) goes on.
        """
        task = asyncio.get_running_loop().create_task(
            self._serialised(operation), name=f"{self.label} operation")
        _OPERATIONS.add(task)
        task.add_done_callback(_operation_done)
        return await asyncio.shield(task)

    async def _serialised(self, operation: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            return await operation()

    async def until_idle(self, bound: float = STATE_WAIT_BOUND) -> None:
        """Wait until the operations in flight or queued on this process are done, at most
        `bound` seconds.

        So a State reflects what runc did, as the Go shim's does (its Status takes the
        process lock): after a Resume whose caller gave up, State must not say PAUSED while
        runc is resuming. Past the bound it returns anyway (a hung runc must not wedge
        State; the status then says what is in flight where it can: PAUSING)."""
        if not self._lock.locked():
            return
        try:
            async with asyncio.timeout(bound), self._lock:
                pass
        except TimeoutError:
            pass

    def transition(self, state: ProcessState) -> None:
        self.state = state

    def signal(self, signal: int) -> None:
        """Signal the process itself by pid, no runtime (an exec's Kill; conmon forwarding its
        SIGTERM): never once it was reaped, so a reused pid is never hit."""
        if self.reaped or not self.pid:
            raise NotFound(f"{self.label}: process already finished", **self.names)
        try:
            os.kill(self.pid, signal)
        except ProcessLookupError as error:
            raise NotFound(f"{self.label}: process already finished", **self.names) from error

    def record_exit(self, status: int, time_ns: int) -> None:
        """The exit as reported to containerd: wakes every Wait."""
        self.exit_status = status
        self.exited_at_ns = time_ns
        self._exited.set()

    def release_waiters(self, error: EngineError) -> None:
        """Deleted without ever exiting: Wait callers get `error` instead of hanging."""
        if not self._exited.is_set():
            self._wait_error = error
            self._exited.set()

    async def wait(self) -> tuple[int, int | None]:
        """(exit status, exit time in ns) once the process has exited."""
        await self._exited.wait()
        if self._wait_error is not None:
            raise self._wait_error
        return self.exit_status, self.exited_at_ns


class ProcessState:
    """One state of a process. Every operation is refused unless a subclass allows it."""

    status: Status

    def __init__(self, process: Process) -> None:
        self.process = process

    def refuse(self, message: str) -> NoReturn:
        raise WrongState(f"{self.process.label}: {message}", **self.process.names, cause=message)

    def gone(self) -> NoReturn:
        if self.process.is_init:
            raise NotFound(f"container {self.process.container.id}: container not created",
                           **self.process.names)
        raise NotFound(f"{self.process.label}: process does not exist {self.process.id}",
                       **self.process.names)

    async def start(self) -> None:
        self.refuse(f"cannot start a {self.status.value} process")

    async def delete(self) -> None:
        self.refuse(f"cannot delete a {self.status.value} process")

    async def kill(self, signal: int, all_processes: bool) -> None:
        self.refuse(f"cannot kill a {self.status.value} process")

    async def pause(self) -> None:
        self.refuse(f"cannot pause a {self.status.value} process")

    async def resume(self) -> None:
        self.refuse(f"cannot resume a {self.status.value} process")

    def check_exec(self) -> None:
        self.refuse(f"cannot exec in a {self.status.value} state")

    def check_update(self) -> None:
        self.refuse(f"cannot update a {self.status.value} container")

    def exited(self) -> None:
        """The reaper saw the process die (output may still be draining)."""
        self.process.transition(self.process.stopped_state())


def _operation_done(task: asyncio.Task[Any]) -> None:
    _OPERATIONS.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Retrieved here: the caller got it, or was gone and the log is all that is left.
        log.debug("%s ended with %r", task.get_name(), task.exception())


async def finish_operations(timeout: float) -> None:
    """At shutdown: let operations whose callers left finish (bounded)."""
    if _OPERATIONS:
        await asyncio.wait(set(_OPERATIONS), timeout=timeout)
