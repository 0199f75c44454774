"""One container: its init and exec processes, its runtime, rootfs, cgroup, and its exits.

The engine's entry point for every front end. The monitor is a child subreaper
(reaper.become_subreaper()) with a Reaper installed on its loop. Construct a `Container` with a
ContainerConfig (how the runtime is invoked), the Reaper, a Listener (what to report) and
optionally ContainerFiles (where pid files, spools and exit records go; containerd's bundle
layout by default), then:

- `await create(rootfs, stdio, io=…)` → init pid (`runtime create`; `restore_from=` restores);
  or `adopt()` for a container some other monitor created (exec sessions only);
- `await process.operate(lambda: start(process))` → pid (start the init or an exec);
- `add_exec(exec_id, stdio, spec | spec_file=…, io=…)`, then start it as above;
- `await process.operate(lambda: process.state.kill(signal, all))` (through the runtime), or
  `process.signal(signal)` (by pid, never after the reap); `await process.wait()`;
- `watch_oom()` once the init runs (start does it; a front end whose caller runs
  `runtime start` itself calls it after create);
- `await process.operate(process.state.delete)`; `await close()` when the monitor leaves.

Exits are recorded at reap time (ContainerFiles.record_exit) and reported in order by the
ExitReporting half (exits.py); execs live in the ExecManagement half (execs.py). Failures are
pyshim.errors types; a front end translates them. Never speaks a front end's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from pyshim import cgroups, mount
from pyshim.bundle import read_pid
from pyshim.errors import EngineError, NotFound, RuntimeFailed
from pyshim.io import ProcessIO, StdioConfig
from pyshim.oom import OOMWatcher
from pyshim.process import oneshot
from pyshim.process.base import Process
from pyshim.process.config import (
    ContainerConfig,
    Listener,
    check_bundle,
    has_private_pid_namespace,
    read_spec,
)
from pyshim.process.exec import ExecProcess
from pyshim.process.execs import DELETE_DRAIN_TIMEOUT, ExecManagement
from pyshim.process.exits import EXIT_DRAIN_TIMEOUT, ExitReporting
from pyshim.process.files import BundleFiles, ContainerFiles
from pyshim.process.init import InitAdopted, InitProcess
from pyshim.process.support import open_io, runtime_error
from pyshim.reaper import Reaper
from pyshim.runtime import OCIRuntime, OCIRuntimeError, RuntimeTimeout

__all__ = ["Container", "ContainerConfig", "Listener"]

log = logging.getLogger("pyshim.container")
T = TypeVar("T")

_KILL_GONE = ("container not running", "no such process", "process already finished", "ESRCH")


class Container(ExitReporting, ExecManagement):
    """Created by `create()` (or `adopt()`); afterwards every call for this id lands here."""

    def __init__(
        self,
        *,
        container_id: str,
        bundle: str,
        config: ContainerConfig,
        reaper: Reaper,
        listener: Listener,
        files: ContainerFiles | None = None,
        oom_watcher: OOMWatcher | None = None,
        exit_drain_timeout: float = EXIT_DRAIN_TIMEOUT,
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.config = config
        self.reaper = reaper
        self.listener = listener
        self.files: ContainerFiles = files if files is not None else BundleFiles(bundle)
        self.oom_watcher = oom_watcher
        self.exit_drain_timeout = exit_drain_timeout
        self.runtime = OCIRuntime(reaper, config.runtime)
        self.init: InitProcess = InitProcess(self, container_id, StdioConfig(), ProcessIO())
        self.execs: dict[str, ExecProcess] = {}
        self.rootfs: list[mount.Mount] = []
        self.private_pid_namespace = True
        self.cgroup: cgroups.Cgroup | None = None
        self.oom_killed = False
        #: The init's delete removed runc's state and unmounted the rootfs: nothing is left
        #: for a clean-up after the monitor (containerd's `delete` action) to do.
        self.deleted_cleanly = False
        self._exec_starts = 0
        self._exec_change = asyncio.Event()

    @property
    def rootfs_path(self) -> str:
        return os.path.join(self.bundle, "rootfs")

    # ----------------------------------------------------------------------------- create

    async def create(
        self,
        rootfs: Sequence[mount.Mount],
        stdio: StdioConfig,
        *,
        io: ProcessIO | None = None,
        restore_from: str | None = None,
        before_runtime: Callable[[], None] | None = None,
    ) -> int:
        """Mount the rootfs, prepare stdio, `runtime create`; returns the init pid.

        `io` replaces the I/O that `stdio` would open (a front end relaying its own fds).
        `restore_from`: a checkpoint image directory; `runtime restore --detach` instead.
        `before_runtime`: the front end's bookkeeping right before the runtime is called (in
        the create child when there is one: blocking calls, failures as EngineError).
        """
        runtime = self.config.runtime
        if (self.config.create_in_child and restore_from is None and not runtime.pass_fds
                and not runtime.preserve_fds):
            return await self._create_in_child(rootfs, stdio, io, before_runtime)
        spec = read_spec(self.bundle, self.id)
        self.private_pid_namespace = has_private_pid_namespace(spec)
        if rootfs:
            os.makedirs(self.rootfs_path, mode=0o711, exist_ok=True)
            try:
                await mount.mount_all_async(rootfs, self.rootfs_path)
            except mount.MountError as error:
                raise EngineError(f"container {self.id}: {error}", container_id=self.id,
                                  cause=error.reason) from error
            self.rootfs = list(rootfs)
        runtime_called = False
        try:
            if io is None:
                io = await open_io(stdio, self.io_context(None), self.id, None)
            self.init = InitProcess(self, self.id, stdio, io)
            since = self.reaper.sequence
            pid_file = self.files.pid_file(None)
            what = "create" if restore_from is None else "restore"
            if before_runtime is not None:
                before_runtime()
            try:
                runtime_called = True
                if restore_from is None:
                    await self.runtime.create(self.id, self.bundle, pid_file, io.runtime_stdio(),
                                              console_socket=io.console_socket)
                else:
                    await self.runtime.restore(
                        self.id, self.bundle, pid_file, io.runtime_stdio(),
                        image_path=restore_from, console_socket=io.console_socket)
                self.init.pid = read_pid(pid_file)
            except OCIRuntimeError as error:
                raise self._runtime_failure(what, error) from error
            except (OSError, ValueError) as error:
                raise EngineError(
                    f"container {self.id}: runc {what} left no usable pid file: {error}",
                    container_id=self.id, cause=str(error),
                ) from error
            await io.start()
        except BaseException:
            await self._undo_create(runtime_called)
            raise
        return self._created(since)

    async def _create_in_child(self, rootfs: Sequence[mount.Mount], stdio: StdioConfig,
                               io: ProcessIO | None,
                               before_runtime: Callable[[], None] | None) -> int:
        """create(), its one-shot work done by a child forked for it (oneshot.py): the stdio
        is opened first, here, for the child and the runtime to inherit."""
        check_bundle(self.bundle, self.id)
        if io is None:
            io = await open_io(stdio, self.io_context(None), self.id, None)
        self.init = InitProcess(self, self.id, stdio, io)
        since = self.reaper.sequence
        job = oneshot.CreateJob(
            container_id=self.id, bundle=self.bundle, rootfs_path=self.rootfs_path,
            mounts=rootfs, runtime=self.runtime, files=self.files, io=io,
            before_runtime=before_runtime)
        report = oneshot.CreateReport.unknown(job)  # until the child says otherwise
        try:
            report = await oneshot.create(job, self.reaper)
            self.private_pid_namespace = report.private_pid_namespace
            if isinstance(report.error, OCIRuntimeError):
                raise self._runtime_failure("create", report.error) from report.error
            if report.error is not None:
                raise report.error
            self.init.pid = report.pid
            self.cgroup = report.cgroup
            await io.start()
        except BaseException:
            if report.mounted:
                self.rootfs = list(rootfs)
            await self._undo_create(report.runtime_called)
            raise
        if rootfs:
            self.rootfs = list(rootfs)
        return self._created(since)

    def _runtime_failure(self, what: str, error: OCIRuntimeError) -> EngineError:
        failure = runtime_error(self.init, f"OCI runtime {what} failed", error)
        if isinstance(failure, RuntimeFailed):
            failure.stderr = self.init.io.unread_stderr()
        return failure

    async def _undo_create(self, runtime_called: bool) -> None:
        if runtime_called:
            # Whatever runc got done (a half-created container, a runc init) goes too.
            with contextlib.suppress(OCIRuntimeError):
                await self.runtime.delete(self.id, force=True)
        await self.init.io.close()
        await self._unmount_rootfs()

    def _created(self, since: int) -> int:
        self._watch(self.init, since)
        self._find_cgroup()
        try:
            self.files.created(self.init.pid)
        except OSError as error:
            log.warning("container %s: recording its creation: %s", self.id, error)
        return self.init.pid

    def adopt(self) -> None:
        """A container created (and monitored) by someone else: only execs are ours."""
        self.init.transition(InitAdopted(self.init))

    def _find_cgroup(self) -> None:
        if self.cgroup is not None or not self.init.pid:
            return
        try:
            self.cgroup = cgroups.cgroup_of_pid(self.init.pid)
        except Exception as error:  # stats/OOM only; the container works without
            log.warning("container %s: no cgroup found: %s", self.id, error)

    # ------------------------------------------------------------------------------ start

    async def start(self, process: Process) -> int:
        """Start (init or exec) with the start reported before any exit of the process.
        Called through process.operate(): serialised, and completed even if the caller left."""
        process.start_done.clear()
        try:
            await process.state.start()
            self.listener.process_started(process)
        finally:
            process.start_done.set()
        return process.pid

    async def runtime_start_init(self) -> None:
        try:
            await self.runtime.start(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime start failed", error) from error
        self.watch_oom()

    def watch_oom(self) -> None:
        """Tell the Listener about OOM kills in the init's cgroup (needs an oom_watcher)."""
        self._find_cgroup()
        if self.oom_watcher is not None and self.cgroup is not None:
            self.oom_watcher.add(self.id, self.cgroup, lambda _key: self._oom())

    def _oom(self) -> None:
        self.oom_killed = True
        self.listener.container_oom(self)

    # ------------------------------------------------------------------------ operations

    async def runtime_kill(self, signal: int, all_processes: bool) -> None:
        try:
            await self.runtime.kill(self.id, signal, all_processes=all_processes)
        except RuntimeTimeout as error:
            raise runtime_error(self.init, "kill", error) from error
        except OCIRuntimeError as error:
            names = {"container_id": self.id, "cause": error.message}
            if any(marker in error.message for marker in _KILL_GONE):
                raise NotFound(f"container {self.id}: process already finished", **names) \
                    from error
            if "does not exist" in error.message:
                raise NotFound(f"container {self.id}: no such container", **names) from error
            raise RuntimeFailed(f"container {self.id}: unknown error after kill: {error.message}",
                                **names) from error

    async def runtime_pause(self) -> None:
        try:
            await self.runtime.pause(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime pause failed", error) from error

    async def runtime_resume(self) -> None:
        try:
            await self.runtime.resume(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime resume failed", error) from error

    async def update(self, resources: dict[str, object]) -> None:
        self.init.state.check_update()
        try:
            await self.runtime.update(self.id, resources)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime update failed", error) from error

    async def pids(self) -> list[tuple[int, str]]:
        """(pid, exec id or "") for every process in the container."""
        try:
            pids = await self.runtime.ps(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "failed to list processes", error) from error
        exec_ids = {process.pid: process.id for process in self.execs.values() if process.pid}
        return [(pid, exec_ids.get(pid, "")) for pid in pids]

    def stats(self, read: Callable[[cgroups.Cgroup], T]) -> T:
        """`read(cgroup)` of the container's cgroup (the front end's statistics format);
        NotFound when there is none, or `read` raises CgroupGone."""
        self._find_cgroup()
        if self.cgroup is None:
            raise NotFound(f"container {self.id}: cgroup does not exist", container_id=self.id)
        try:
            return read(self.cgroup)
        except cgroups.CgroupGone as error:
            raise NotFound(f"container {self.id}: cgroup does not exist",
                           container_id=self.id) from error

    # ----------------------------------------------------------------------------- delete

    async def runtime_delete_init(self) -> None:
        if not self.init.reaped and self.init.watcher is not None:
            # Never started (or never exited): its exit now is part of the delete, not news.
            self.init.watcher.cancel()
        await self.init.io.close(DELETE_DRAIN_TIMEOUT)
        try:
            await self.runtime.delete(self.id)
        except OCIRuntimeError as error:
            if "does not exist" not in error.message:
                raise runtime_error(self.init, "failed to delete task", error) from error
        # Execs nobody deleted: their relays, fds, spools and files go with the container.
        for process in list(self.execs.values()):
            await process.operate(functools.partial(self._discard_exec, process))
        self.deleted_cleanly = await self._unmount_rootfs()
        if self.oom_watcher is not None:
            self.oom_watcher.remove(self.id)
        self.init.release_waiters(
            NotFound(f"container {self.id}: deleted before it exited", container_id=self.id))

    async def _unmount_rootfs(self) -> bool:
        """Whether nothing we mounted is left (a failure is logged, never raised)."""
        if self.rootfs:
            try:
                await mount.unmount_all_async(self.rootfs_path)
            except OSError as error:
                log.warning("container %s: unmounting rootfs: %s", self.id, error)
                self.rootfs = []
                return False
            self.rootfs = []
        return True

    async def close(self) -> None:
        """Monitor going away: stop watching (the processes are not ours to kill)."""
        for process in (self.init, *self.execs.values()):
            if process.watcher is not None:
                process.watcher.cancel()
        for process in (self.init, *self.execs.values()):
            await process.io.close()
