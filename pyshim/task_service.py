"""The containerd Task API (containerd.task.v2.Task, also served as v3).

Translates requests into engine calls (runc Options into a ContainerConfig, Mount messages into
engine mounts) and outcomes into replies, status codes and events. No syscalls of its own, no
runc: those live below. Every error names the container, the process and the cause; engine
errors become status codes in pyshim.shim.errors (each handler is wrapped by
engine_errors_mapped). Ids are checked with containerd's rules before anything uses them; a
state change, once begun, is completed and published even when the caller's deadline passes
or its connection drops.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from pyshim import identifiers
from pyshim import options as runtime_options
from pyshim.cgroup_metrics import metrics
from pyshim.errors import InvalidInput as EngineInvalidInput
from pyshim.events import Publisher
from pyshim.io import StdioConfig
from pyshim.mount import Mount
from pyshim.oom import OOMWatcher
from pyshim.options import RuncOptions
from pyshim.process import Container, ContainerConfig, Process, Status
from pyshim.process.base import finish_operations
from pyshim.protos.containerd.events import task_pb2 as events_pb2
from pyshim.protos.containerd.runc.v1 import options_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.reaper import Reaper
from pyshim.runtime import RuntimeConfig
from pyshim.shim import delete as delete_action
from pyshim.shim.errors import engine_errors_mapped
from pyshim.ttrpc import CallContext
from pyshim.ttrpc.status import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
    Unknown,
)

log = logging.getLogger("pyshim.task")

#: Environment (containerd's): "0" runs Create's one-shot work in the daemon itself instead of
#: a short-lived child forked for it (pyshim/process/oneshot.py; docs/memory.md).
CREATE_IN_CHILD_VARIABLE = "PYSHIM_CREATE_IN_CHILD"

# "Not exited" is Go's zero time (0001-01-01T00:00:00Z), not the epoch (spec §3.2).
GO_ZERO_SECONDS = -62135596800

_STATUS = {
    Status.CREATED: task_pb2.CREATED,
    Status.RUNNING: task_pb2.RUNNING,
    Status.PAUSING: task_pb2.PAUSING,
    Status.PAUSED: task_pb2.PAUSED,
    Status.STOPPED: task_pb2.STOPPED,
    Status.DELETED: task_pb2.STOPPED,
}


def timestamp(time_ns: int | None) -> timestamp_pb2.Timestamp:
    if time_ns is None:
        return timestamp_pb2.Timestamp(seconds=GO_ZERO_SECONDS)
    return timestamp_pb2.Timestamp(seconds=time_ns // 1_000_000_000, nanos=time_ns % 1_000_000_000)


def _checked(identifier: str, what: str) -> str:
    try:
        return identifiers.validate(identifier, what)
    except identifiers.InvalidIdentifier as error:
        raise InvalidArgument(str(error)) from error


def _json_any(value: any_pb2.Any, what: str, container_id: str) -> dict[str, Any]:
    """OCI payloads travel as JSON inside an Any whatever its type URL (spec §3.3.4, §3.3.12)."""
    try:
        decoded = json.loads(value.value or b"{}")
    except ValueError as error:
        raise InvalidArgument(f"container {container_id}: {what} is not valid JSON: {error}") \
            from error
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"container {container_id}: {what} must be a JSON object")
    return decoded


def container_config(options: RuncOptions, namespace: str, bundle: str) -> ContainerConfig:
    """runc Options as the engine takes them: runc with `--root <root>/<namespace>`, its JSON
    log in `<bundle>/log.json` (as runc-v2 runs it)."""
    runtime = RuntimeConfig(
        binary=options.binary, root=options.runc_root(namespace),
        log_path=os.path.join(bundle, "log.json"), systemd_cgroup=options.systemd_cgroup,
        criu=options.criu_path, no_pivot=options.no_pivot_root,
        no_new_keyring=options.no_new_keyring, timeout=options.runc_timeout_seconds,
    )
    return ContainerConfig(
        runtime=runtime, io_uid=options.io_uid or -1, io_gid=options.io_gid or -1,
        spool_max=options.spool_max_bytes, namespace=namespace,
        create_in_child=os.environ.get(CREATE_IN_CHILD_VARIABLE, "1") != "0",
    )


def _save_options(container_id: str, bundle: str, options: RuncOptions) -> None:
    """options.json and runtime in the bundle (for `delete`), before runc create (in the
    create child: see Container.create)."""
    try:
        runtime_options.save(bundle, options)
    except FileNotFoundError as error:
        raise EngineInvalidInput(f"container {container_id}: bundle {bundle} does not exist",
                                 container_id=container_id) from error


def engine_mounts(rootfs: Any) -> list[Mount]:
    """containerd's Mount messages as the engine's mounts."""
    return [Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))
            for m in rootfs]


class TaskService:
    """One per shim daemon; serves every container grouped into this shim."""

    def __init__(
        self,
        *,
        namespace: str,
        publisher: Publisher,
        reaper: Reaper,
        default_options: RuncOptions,
        oom_watcher: OOMWatcher | None = None,
        on_last_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self.reaper = reaper
        self.default_options = default_options
        self.oom_watcher = oom_watcher
        self.on_last_shutdown = on_last_shutdown
        self.containers: dict[str, Container] = {}
        self._creating: set[str] = set()
        # Creates whose callers may have gone; shielded like every process operation.
        self._create_tasks: set[asyncio.Task[shim_pb2.CreateTaskResponse]] = set()

    def container(self, container_id: str) -> Container:
        container = self.containers.get(container_id)
        if container is None:
            raise NotFound(f"container {container_id}: container not created")
        return container

    def process(self, container_id: str, exec_id: str) -> Process:
        return self.container(container_id).process(exec_id)

    # ----------------------------------------------------------------- Listener (events)

    def process_started(self, process: Process) -> None:
        if process.is_init:
            self.publisher.publish(
                "/tasks/start", events_pb2.TaskStart(container_id=process.container.id,
                                                     pid=process.pid))
        else:
            self.publisher.publish(
                "/tasks/exec-started",
                events_pb2.TaskExecStarted(container_id=process.container.id,
                                           exec_id=process.id, pid=process.pid))

    def process_exited(self, process: Process) -> None:
        self.publisher.publish(
            "/tasks/exit",
            events_pb2.TaskExit(
                container_id=process.container.id, id=process.id, pid=process.pid,
                exit_status=process.exit_status, exited_at=timestamp(process.exited_at_ns),
            ),
        )

    def container_oom(self, container: Container) -> None:
        self.publisher.publish("/tasks/oom", events_pb2.TaskOOM(container_id=container.id))

    # ------------------------------------------------------------------------- methods

    @engine_errors_mapped
    async def create(self, request: Any, context: CallContext) -> shim_pb2.CreateTaskResponse:
        container_id = request.id
        if not container_id:
            raise InvalidArgument("create: container id is empty")
        _checked(container_id, "container id")
        if container_id in self.containers or container_id in self._creating:
            raise AlreadyExists(f"container {container_id}: already exists")
        if request.checkpoint:
            raise Unimplemented(
                f"container {container_id}: restore from checkpoint is not supported by pyshim"
            )
        if not request.bundle or not os.path.isabs(request.bundle):
            raise InvalidArgument(
                f"container {container_id}: bundle must be an absolute path, got "
                f"{request.bundle!r}"
            )
        self._creating.add(container_id)
        # runc create, once begun, completes and is recorded whatever happens to the caller
        # (containerd then finds the task and deletes it, as after any failed create).
        task = asyncio.get_running_loop().create_task(
            self._create(container_id, request), name=f"create container {container_id}")
        self._create_tasks.add(task)
        task.add_done_callback(self._create_done)
        return await asyncio.shield(task)

    def _create_done(self, task: asyncio.Task[shim_pb2.CreateTaskResponse]) -> None:
        self._create_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("%s: %r", task.get_name(), task.exception())

    async def _create(self, container_id: str, request: Any) -> shim_pb2.CreateTaskResponse:
        try:
            options = self.default_options
            if request.HasField("options") and request.options.type_url:
                try:
                    options = runtime_options.decode(
                        request.options.type_url, request.options.value
                    )
                except runtime_options.InvalidOptions as error:
                    raise InvalidArgument(f"container {container_id}: {error}") from error
            container = Container(
                container_id=container_id, bundle=request.bundle,
                config=container_config(options, self.namespace, request.bundle),
                reaper=self.reaper, listener=self, oom_watcher=self.oom_watcher,
            )
            stdio = StdioConfig(request.stdin, request.stdout, request.stderr, request.terminal)
            pid = await container.create(
                engine_mounts(request.rootfs), stdio,
                before_runtime=functools.partial(_save_options, container_id, request.bundle,
                                                 options))
            self.containers[container_id] = container
        finally:
            self._creating.discard(container_id)
        self.publisher.publish(
            "/tasks/create",
            events_pb2.TaskCreate(
                container_id=container_id, bundle=request.bundle, rootfs=request.rootfs,
                io=events_pb2.TaskIO(stdin=request.stdin, stdout=request.stdout,
                                     stderr=request.stderr, terminal=request.terminal),
                checkpoint=request.checkpoint, pid=pid,
            ),
        )
        return shim_pb2.CreateTaskResponse(pid=pid)

    @engine_errors_mapped
    async def start(self, request: Any, context: CallContext) -> shim_pb2.StartResponse:
        container = self.container(request.id)
        process = container.process(request.exec_id)
        pid = await process.operate(lambda: container.start(process))
        return shim_pb2.StartResponse(pid=pid)

    @engine_errors_mapped
    async def delete(self, request: Any, context: CallContext) -> shim_pb2.DeleteResponse:
        container = self.container(request.id)
        process = container.process(request.exec_id)
        return await process.operate(lambda: self._delete(container, process))

    async def _delete(self, container: Container, process: Process) -> shim_pb2.DeleteResponse:
        await process.state.delete()
        if process.is_init:
            if container.deleted_cleanly:
                # containerd runs `delete` next: it then needs no Python, no runc, no unmount.
                delete_action.record_clean_delete(container.bundle)
            if self.containers.get(container.id) is container:
                del self.containers[container.id]
            self.publisher.publish(
                "/tasks/delete",
                events_pb2.TaskDelete(
                    container_id=container.id, pid=process.pid,
                    exit_status=process.exit_status, exited_at=timestamp(process.exited_at_ns),
                ),
            )
        return shim_pb2.DeleteResponse(
            pid=process.pid, exit_status=process.exit_status,
            exited_at=timestamp(process.exited_at_ns),
        )

    @engine_errors_mapped
    async def exec(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        container = self.container(request.id)
        if not request.exec_id:
            raise InvalidArgument(f"container {request.id}: exec id is empty")
        _checked(request.exec_id, f"container {request.id}: exec id")
        spec = _json_any(request.spec, f"exec {request.exec_id} process spec", request.id)
        stdio = StdioConfig(request.stdin, request.stdout, request.stderr, request.terminal)
        container.add_exec(request.exec_id, stdio, spec)
        self.publisher.publish(
            "/tasks/exec-added",
            events_pb2.TaskExecAdded(container_id=container.id, exec_id=request.exec_id),
        )
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def state(self, request: Any, context: CallContext) -> shim_pb2.StateResponse:
        await self.container(request.id).process(request.exec_id).until_idle()
        # Looked up again: an operation waited for may have deleted it (NOT_FOUND then).
        container = self.container(request.id)
        process = container.process(request.exec_id)
        return shim_pb2.StateResponse(
            id=process.id, bundle=container.bundle, pid=process.pid,
            status=_STATUS[process.status],
            stdin=process.stdio.stdin, stdout=process.stdio.stdout, stderr=process.stdio.stderr,
            terminal=process.stdio.terminal, exit_status=process.exit_status,
            exited_at=timestamp(process.exited_at_ns),
        )

    @engine_errors_mapped
    async def pids(self, request: Any, context: CallContext) -> shim_pb2.PidsResponse:
        container = self.container(request.id)
        response = shim_pb2.PidsResponse()
        for pid, exec_id in await container.pids():
            info = response.processes.add(pid=pid)
            if exec_id:
                details = options_pb2.ProcessDetails(exec_id=exec_id)
                info.info.type_url = details.DESCRIPTOR.full_name
                info.info.value = details.SerializeToString()
        return response

    @engine_errors_mapped
    async def pause(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        container = self.container(request.id)

        async def pause() -> None:
            await container.init.state.pause()
            self.publisher.publish("/tasks/paused",
                                   events_pb2.TaskPaused(container_id=container.id))

        await container.init.operate(pause)
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def resume(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        container = self.container(request.id)

        async def resume() -> None:
            await container.init.state.resume()
            self.publisher.publish("/tasks/resumed",
                                   events_pb2.TaskResumed(container_id=container.id))

        await container.init.operate(resume)
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def checkpoint(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        self.container(request.id)
        raise Unimplemented(
            f"container {request.id}: checkpoint is not supported by pyshim (no CRIU support)"
        )

    @engine_errors_mapped
    async def kill(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        process = self.process(request.id, request.exec_id)
        await process.operate(lambda: process.state.kill(request.signal, request.all))
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def resize_pty(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        process = self.process(request.id, request.exec_id)
        if not process.stdio.terminal:
            return empty_pb2.Empty()  # no terminal: nothing to resize (as runc-v2)
        try:
            process.io.resize(request.width, request.height)
        except OSError as error:
            raise FailedPrecondition(f"{process.label}: cannot resize the terminal: {error}") \
                from error
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def close_io(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        process = self.process(request.id, request.exec_id)
        try:
            process.io.close_stdin()
        except OSError as error:
            raise Unknown(f"{process.label}: close stdin: {error}") from error
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def update(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        container = self.container(request.id)
        resources = _json_any(request.resources, "update resources", request.id)
        await container.init.operate(lambda: container.update(resources))
        return empty_pb2.Empty()

    @engine_errors_mapped
    async def wait(self, request: Any, context: CallContext) -> shim_pb2.WaitResponse:
        process = self.process(request.id, request.exec_id)
        status, exited_at = await process.wait()
        return shim_pb2.WaitResponse(exit_status=status, exited_at=timestamp(exited_at))

    @engine_errors_mapped
    async def stats(self, request: Any, context: CallContext) -> shim_pb2.StatsResponse:
        container = self.container(request.id)
        return shim_pb2.StatsResponse(stats=container.stats(metrics))

    @engine_errors_mapped
    async def connect(self, request: Any, context: CallContext) -> shim_pb2.ConnectResponse:
        container = self.containers.get(request.id)
        return shim_pb2.ConnectResponse(
            shim_pid=os.getpid(), task_pid=container.init.pid if container else 0
        )

    @engine_errors_mapped
    async def shutdown(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        if not self.containers and not self._creating and self.on_last_shutdown is not None:
            # Before the reply (it must only schedule the close: containerd expects the
            # answer, then the close): containerd runs `delete` as soon as it has the answer.
            self.on_last_shutdown()
        return empty_pb2.Empty()

    async def close(self) -> None:
        await finish_operations(timeout=5.0)
        for container in list(self.containers.values()):
            await container.close()
