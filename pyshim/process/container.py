"""One container: its init and exec processes, its runc, rootfs, cgroup, and its exits.

Creates, starts, execs, signals and deletes through runc; exits are recorded and reported in
order by its ExitReporting half (exits.py). Talks to runc, the reaper, io, mounts and cgroups;
tells a Listener what happened, never containerd itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pyshim import bundle as bundle_files
from pyshim import cgroups, mount
from pyshim.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EngineError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    RuntimeFailed,
    Unsupported,
)
from pyshim.io import (
    IOContext,
    ProcessIO,
    StdioConfig,
    StdioError,
    StdioTimeout,
    UnsupportedStdio,
    open_process_io,
)
from pyshim.options import RuncOptions
from pyshim.process.base import Process
from pyshim.process.exec import ExecDeleted, ExecProcess
from pyshim.process.exits import EXIT_DRAIN_TIMEOUT, ExitReporting
from pyshim.process.init import InitProcess
from pyshim.protos.containerd.types import mount_pb2
from pyshim.reaper import Reaper
from pyshim.runtime import OCIRuntimeError, Runc, RuntimeTimeout

log = logging.getLogger("pyshim.container")

# Delete waits this long for the output relays to reach EOF (spec §6.6: runc-v2 uses 2 s).
DELETE_DRAIN_TIMEOUT = 2.0

_KILL_GONE = ("container not running", "no such process", "process already finished", "ESRCH")


class Listener(Protocol):
    """What the container reports as it happens (the task service turns it into events)."""

    def process_started(self, process: Process) -> None: ...

    def process_exited(self, process: Process) -> None: ...

    def container_oom(self, container: Container) -> None: ...


def read_spec(bundle: str, container_id: str) -> dict[str, Any]:
    path = os.path.join(bundle, "config.json")
    if not os.path.isdir(bundle):
        raise InvalidInput(f"container {container_id}: bundle {bundle} does not exist")
    try:
        with open(path, "rb") as config:
            spec = json.load(config)
    except FileNotFoundError as error:
        raise InvalidInput(
            f"container {container_id}: bundle {bundle} has no config.json"
        ) from error
    except (OSError, ValueError) as error:
        raise InvalidInput(
            f"container {container_id}: cannot read {path}: {error}"
        ) from error
    if not isinstance(spec, dict):
        raise InvalidInput(f"container {container_id}: {path} is not a JSON object")
    return spec


def runtime_error(process: Process, what: str, error: OCIRuntimeError) -> EngineError:
    """A failed runc command as the error the caller gets: a hung one is DeadlineExceeded."""
    message = f"{process.label}: {what}: {error.message}"
    result: EngineError
    if isinstance(error, RuntimeTimeout):
        result = DeadlineExceeded(message, **process.names, cause=error.message)
    else:
        result = RuntimeFailed(message, **process.names, cause=error.message)
        result.command, result.exit_status = error.command, error.status
    return result


def has_private_pid_namespace(spec: Mapping[str, Any]) -> bool:
    """A `pid` namespace entry without a path: the kernel kills every process when the init
    dies. Otherwise (host's or another container's) we must kill them ourselves."""
    namespaces = (spec.get("linux") or {}).get("namespaces") or []
    return any(
        isinstance(entry, dict) and entry.get("type") == "pid" and not entry.get("path")
        for entry in namespaces
    )


class Container(ExitReporting):
    """Created by `create()`; afterwards every Task call for this id lands here."""

    def __init__(
        self,
        *,
        container_id: str,
        bundle: str,
        namespace: str,
        options: RuncOptions,
        reaper: Reaper,
        listener: Listener,
        oom_watcher: cgroups.OOMWatcher | None = None,
        exit_drain_timeout: float = EXIT_DRAIN_TIMEOUT,
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.namespace = namespace
        self.options = options
        self.reaper = reaper
        self.listener = listener
        self.oom_watcher = oom_watcher
        self.exit_drain_timeout = exit_drain_timeout
        self.runc = Runc(
            reaper,
            binary=options.binary,
            root=options.runc_root(namespace),
            log_path=os.path.join(bundle, "log.json"),
            systemd_cgroup=options.systemd_cgroup,
            criu=options.criu_path,
            timeout=options.runc_timeout_seconds,
        )
        self.init: InitProcess = InitProcess(self, container_id, StdioConfig(), ProcessIO())
        self.execs: dict[str, ExecProcess] = {}
        self.rootfs: list[mount_pb2.Mount] = []
        self.private_pid_namespace = True
        self.cgroup: cgroups.Cgroup | None = None
        self.oom_killed = False
        self._exec_starts = 0
        self._exec_change = asyncio.Event()

    @property
    def rootfs_path(self) -> str:
        return os.path.join(self.bundle, "rootfs")

    # ----------------------------------------------------------------------------- create

    async def create(
        self,
        rootfs: Sequence[mount_pb2.Mount],
        stdio: StdioConfig,
        *,
        io: ProcessIO | None = None,
    ) -> int:
        """Mount the rootfs, prepare stdio, `runc create`; returns the init pid.

        `io` replaces the I/O that `stdio` would open (a front end relaying its own fds).
        """
        spec = read_spec(self.bundle, self.id)
        self.private_pid_namespace = has_private_pid_namespace(spec)
        if rootfs:
            os.makedirs(self.rootfs_path, mode=0o711, exist_ok=True)
            try:
                await mount.mount_all_async(rootfs, self.rootfs_path)
            except mount.MountError as error:
                raise EngineError(f"container {self.id}: {error}") from error
            self.rootfs = list(rootfs)
        runc_called = False
        try:
            if io is None:
                io = await self._open_io(stdio, self.id, "init")
            self.init = InitProcess(self, self.id, stdio, io)
            since = self.reaper.sequence
            pid_file = os.path.join(self.bundle, "init.pid")
            try:
                runc_called = True
                await self.runc.create(
                    self.id, self.bundle, pid_file, io.runtime_stdio(),
                    console_socket=io.console_socket,
                    no_pivot=self.options.no_pivot_root,
                    no_new_keyring=self.options.no_new_keyring,
                )
                self.init.pid = bundle_files.read_pid(pid_file)
            except OCIRuntimeError as error:
                raise runtime_error(self.init, "OCI runtime create failed", error) \
                    from error
            except (OSError, ValueError) as error:
                raise EngineError(
                    f"container {self.id}: runc create left no usable pid file: {error}"
                ) from error
            await io.start()
        except BaseException:
            if runc_called:
                # Whatever runc got done (a half-created container, a runc init) goes too.
                with contextlib.suppress(OCIRuntimeError):
                    await self.runc.delete(self.id, force=True)
            await self.init.io.close()
            await self._unmount_rootfs()
            raise
        self._watch(self.init, since)
        self._find_cgroup()
        with contextlib.suppress(OSError):
            bundle_files.write_shim_pid(self.bundle, os.getpid())
        return self.init.pid

    async def _open_io(self, stdio: StdioConfig, process_id: str, key: str) -> ProcessIO:
        """The process's stdio, prepared (a logging binary ready, a console socket listening).
        `key` names its files in the bundle ("init", "exec-<id>": an exec may be called
        like the container)."""
        label = f"container {self.id} process {process_id}"
        context = IOContext(
            process_id=process_id, namespace=self.namespace, reaper=self.reaper,
            cwd=self.bundle, uid=self.options.io_uid or -1, gid=self.options.io_gid or -1,
            name=f"{self.id}/{process_id}",
            spool_dir=os.path.join(self.bundle, "spool", key),
            spool_max=self.options.spool_max_bytes,
        )
        try:
            io = open_process_io(stdio, context)
        except UnsupportedStdio as error:
            if error.unimplemented:
                raise Unsupported(f"{label}: {error}") from error
            raise InvalidInput(f"{label}: {error}") from error
        except OSError as error:
            raise InvalidInput(
                f"{label}: cannot open stdio {error.filename or ''}: {error.strerror}"
            ) from error
        try:
            await io.prepare()
        except BaseException as error:
            await io.close()
            if isinstance(error, UnsupportedStdio):
                raise InvalidInput(f"{label}: {error}") from error
            if isinstance(error, StdioTimeout):
                raise DeadlineExceeded(f"{label}: {error}") from error
            if isinstance(error, StdioError | OSError):
                raise EngineError(f"{label}: cannot set up stdio: {error}") from error
            raise
        return io

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
            await self.runc.start(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime start failed", error) from error
        self._find_cgroup()
        if self.oom_watcher is not None and self.cgroup is not None:
            self.oom_watcher.add(self.id, self.cgroup, lambda _key: self._oom())

    def _oom(self) -> None:
        self.oom_killed = True
        self.listener.container_oom(self)

    # ------------------------------------------------------------------------------- exec

    def add_exec(self, exec_id: str, stdio: StdioConfig, spec: dict[str, Any]) -> ExecProcess:
        if exec_id in self.execs:
            raise AlreadyExists(f"container {self.id}: id {exec_id}")
        self.init.state.check_exec()
        process = ExecProcess(self, exec_id, stdio, ProcessIO())
        process.spec = spec
        self.execs[exec_id] = process
        return process

    async def runtime_start_exec(self, process: ExecProcess) -> None:
        if self.init.reaped:
            raise FailedPrecondition(f"container {self.id} init process is not running")
        spec = dict(process.spec)
        spec["terminal"] = process.stdio.terminal
        exec_dir = bundle_files.exec_dir(self.bundle)
        os.makedirs(exec_dir, mode=0o711, exist_ok=True)
        process.io = await self._open_io(process.stdio, process.id, f"exec-{process.id}")
        pid_file = os.path.join(exec_dir, f"{process.id}.pid")
        since = self.reaper.sequence
        self._exec_starts += 1
        try:
            try:
                await self.runc.exec(
                    self.id, spec, pid_file, process.io.runtime_stdio(),
                    console_socket=process.io.console_socket,
                    spec_path=os.path.join(exec_dir, f"{process.id}.json"),
                )
                process.pid = bundle_files.read_pid(pid_file)
            except OCIRuntimeError as error:
                raise runtime_error(process, "OCI runtime exec failed", error) from error
            except (OSError, ValueError) as error:
                raise EngineError(f"{process.label}: runc exec left no usable pid file: {error}") \
                    from error
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
        """Everything the exec held goes: relays, fds, spool, its files in the bundle."""
        if not process.reaped and process.watcher is not None:
            process.watcher.cancel()  # never started, or its exit is no longer news
        try:
            await process.io.close(drain_timeout)
        finally:
            exec_dir = bundle_files.exec_dir(self.bundle)
            for suffix in (".pid", ".exit", ".json"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(exec_dir, process.id + suffix))
            if self.execs.get(process.id) is process:
                del self.execs[process.id]
            process.release_waiters(
                NotFound(f"{process.label}: process was deleted before it exited"))
            self._exec_change.set()

    async def _discard_exec(self, process: ExecProcess) -> None:
        await self.forget_exec(process, 0.0)
        process.transition(ExecDeleted(process))

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        process = self.execs.get(exec_id)
        if process is None:
            raise NotFound(f"container {self.id}: process does not exist {exec_id}")
        return process

    # ------------------------------------------------------------------------ operations

    async def runtime_kill(self, signal: int, all_processes: bool) -> None:
        try:
            await self.runc.kill(self.id, signal, all_processes=all_processes)
        except RuntimeTimeout as error:
            raise runtime_error(self.init, "kill", error) from error
        except OCIRuntimeError as error:
            if any(marker in error.message for marker in _KILL_GONE):
                raise NotFound(f"container {self.id}: process already finished") from error
            if "does not exist" in error.message:
                raise NotFound(f"container {self.id}: no such container") from error
            raise RuntimeFailed(f"container {self.id}: unknown error after kill: {error.message}",
                                container_id=self.id, cause=error.message) \
                from error

    async def runtime_pause(self) -> None:
        try:
            await self.runc.pause(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime pause failed", error) from error

    async def runtime_resume(self) -> None:
        try:
            await self.runc.resume(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime resume failed", error) from error

    async def update(self, resources: dict[str, Any]) -> None:
        self.init.state.check_update()
        try:
            await self.runc.update(self.id, resources)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "OCI runtime update failed", error) from error

    async def pids(self) -> list[tuple[int, str]]:
        """(pid, exec id or "") for every process in the container."""
        try:
            pids = await self.runc.ps(self.id)
        except OCIRuntimeError as error:
            raise runtime_error(self.init, "failed to list processes", error) from error
        exec_ids = {process.pid: process.id for process in self.execs.values() if process.pid}
        return [(pid, exec_ids.get(pid, "")) for pid in pids]

    def stats(self) -> Any:
        self._find_cgroup()
        if self.cgroup is None:
            raise NotFound(f"container {self.id}: cgroup does not exist")
        try:
            return cgroups.metrics(self.cgroup)
        except cgroups.CgroupGone as error:
            raise NotFound(f"container {self.id}: cgroup does not exist") from error

    async def runtime_delete_init(self) -> None:
        if not self.init.reaped and self.init.watcher is not None:
            # Never started (or never exited): its exit now is part of the delete, not news.
            self.init.watcher.cancel()
        await self.init.io.close(DELETE_DRAIN_TIMEOUT)
        try:
            await self.runc.delete(self.id)
        except OCIRuntimeError as error:
            if "does not exist" not in error.message:
                raise runtime_error(self.init, "failed to delete task", error) from error
        # Execs nobody deleted: their relays, fds, spools and files go with the container.
        for process in list(self.execs.values()):
            await process.operate(functools.partial(self._discard_exec, process))
        await self._unmount_rootfs()
        if self.oom_watcher is not None:
            self.oom_watcher.remove(self.id)
        self.init.release_waiters(NotFound(f"container {self.id}: deleted before it exited"))

    async def _unmount_rootfs(self) -> None:
        if self.rootfs:
            try:
                await mount.unmount_all_async(self.rootfs_path)
            except OSError as error:
                log.warning("container %s: unmounting rootfs: %s", self.id, error)
            self.rootfs = []

    async def close(self) -> None:
        """Shim going away: stop watching (the processes are not ours to kill)."""
        for process in (self.init, *self.execs.values()):
            if process.watcher is not None:
                process.watcher.cancel()
        for process in (self.init, *self.execs.values()):
            await process.io.close()

