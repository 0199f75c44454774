"""When a container's process exits: the record on disk at reap time, then the report.

The order of spec §4.4/§6.6: an exit is reported after the process's start, after its last
output byte (when someone reads it), and for the init after every exec's exit. Each of those
waits is bounded, so an exit is reported late rather than never. Part of Container (a mixin:
the state it reads is the container's own).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pyshim.bundle import ExitRecord
from pyshim.process.base import Process, Status
from pyshim.reaper import Exit
from pyshim.runtime import OCIRuntimeError

if TYPE_CHECKING:
    from pyshim.oom import OOMWatcher
    from pyshim.process.config import Listener
    from pyshim.process.exec import ExecProcess
    from pyshim.process.files import ContainerFiles
    from pyshim.reaper import Reaper
    from pyshim.runtime import OCIRuntime

log = logging.getLogger("pyshim.container")

# The exit report waits this long for the process's last bytes to reach a client that reads
# slowly; a client that does not read at all must not hide the exit for ever.
EXIT_DRAIN_TIMEOUT = 10.0
# The init's exit waits this long for the execs to exit (they die with it, or are killed).
EXEC_SETTLE_TIMEOUT = 10.0


class ExitReporting:
    """The exit half of a Container."""

    id: str
    bundle: str
    reaper: Reaper
    runtime: OCIRuntime
    files: ContainerFiles
    listener: Listener
    oom_watcher: OOMWatcher | None
    oom_killed: bool
    private_pid_namespace: bool
    exit_drain_timeout: float
    execs: dict[str, ExecProcess]
    _exec_starts: int
    _exec_change: asyncio.Event

    def _watch(self, process: Process, since: int) -> None:
        future = self.reaper.watch(
            process.pid, since=since, on_exit=lambda exited: self._reaped(process, exited))
        process.watcher = asyncio.get_running_loop().create_task(
            self._report_exit(process, future), name=f"exit {process.label}")

    def _reaped(self, process: Process, exited: Exit) -> None:
        """At reap time, before anything can wait: the pid is gone, and the exit is recorded
        (containerd: on disk, so a shim killed right after still leaves `delete` the truth)."""
        process.reaped = True
        record = ExitRecord(exited.status, exited.time_ns, exited.pid,
                            process.is_init and self.oom_killed)
        try:
            self.files.record_exit(None if process.is_init else process.id, record)
        except OSError as error:
            log.error("%s: cannot record its exit (status %d): %s",
                      process.label, exited.status, error)

    async def _report_exit(self, process: Process, future: asyncio.Future[Exit]) -> None:
        try:
            exited = await future
        except asyncio.CancelledError:
            self.reaper.forget(process.pid, future)
            raise
        if process.is_init:
            await self._after_init_died(process)
        # Each await below that is not needed would cost the exit event a loop turn. Each is
        # bounded: an exit is reported late rather than never.
        if not process.io.output_drained():
            try:
                await asyncio.wait_for(process.io.wait_output(), self.exit_drain_timeout)
            except TimeoutError:
                log.warning("%s: output not drained after %.0f s; reporting the exit anyway",
                            process.label, self.exit_drain_timeout)
        if not process.start_done.is_set():
            # A Start in flight ends within runc's time limit (it is killed after that).
            await process.start_done.wait()
        if process.is_init and not self._execs_idle():
            try:
                await asyncio.wait_for(self._execs_settled(), EXEC_SETTLE_TIMEOUT)
            except TimeoutError:
                log.warning("%s: execs still running %.0f s after the init exited; reporting "
                            "its exit anyway", process.label, EXEC_SETTLE_TIMEOUT)
        if process.is_init and self.oom_killed:
            # The OOM notice came after the reap (or during a Start in flight, which the OOM
            # watch is set up by): the record says so too.
            self._reaped(process, exited)
        process.state.exited()
        process.record_exit(exited.status, exited.time_ns)
        if not process.is_init:
            self._exec_change.set()
        self.listener.process_exited(process)
        log.info("%s: pid %d exited with status %d", process.label, exited.pid, exited.status)

    async def _after_init_died(self, process: Process) -> None:
        if process.status in (Status.PAUSED, Status.PAUSING):
            try:
                await self.runtime.resume(self.id)
            except OCIRuntimeError as error:
                log.warning("%s: resume after the init died: %s", process.label, error.message)
        if not self.private_pid_namespace:
            # No pid namespace of its own: the kernel will not kill the rest for us.
            try:
                await self.runtime.kill(self.id, 9, all_processes=True)
            except OCIRuntimeError as error:
                log.warning("%s: kill --all after the init died: %s", process.label,
                            error.message)
        if self.oom_watcher is not None:
            # An OOM kill is reported before the exit (CRI reads it first): one the cgroup
            # counted is notified now, a pending event gets a loop turn to arrive.
            self.oom_watcher.check(self.id)
            await asyncio.sleep(0)

    def _execs_idle(self) -> bool:
        """No exec start in flight, and every started exec has reported its exit."""
        return self._exec_starts == 0 and not any(
            p.pid and not p.exited for p in self.execs.values())

    async def _execs_settled(self) -> None:
        """Until _execs_idle()."""
        while not self._execs_idle():
            self._exec_change.clear()
            await self._exec_change.wait()
