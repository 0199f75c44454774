"""Create's one-shot work in a short-lived child forked from the monitor for it.

Why: a shim daemon is forked from the warm fork-server, and every page it writes becomes its
own (docs/memory.md). Creating a container runs much code exactly once: reading config.json,
mounting the rootfs, front-end bookkeeping, `runtime create` and waiting for it, its log and
pid file, finding the cgroup. Run in a child, the pages that code copies die with the child.
The monitor keeps what outlives Create: the stdio it opened before the fork (inherited by the
child and through it by the runtime), relays, and the exit watch.

The child: a process group of its own (the runtime and what it starts before detaching are
in it, so one killpg stops them all), signal dispositions back to the defaults, every fd but
stdio, the log (2) and the report pipe closed; the work is plain blocking calls, each bounded.
It writes one marshalled report and `_exit`s. The monitor waits for the child's exit through
its Reaper (the child is its child), then reads the report. The container's init ends up the
monitor's child: when `runtime create` exits its child re-parents to the nearest child
subreaper, and the forked child is none (fork does not inherit the attribute).

Failures are the very engine errors the in-process create raises (same types and messages),
rebuilt from the report. A child overrunning its bound, or the caller's cancellation, kills
the child's group; a child that ends without a report is an EngineError. In each of these
the caller assumes the worst (mounted, runtime called) and undoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import marshal
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pyshim import cgroups, errors, mount
from pyshim.bundle import read_pid
from pyshim.errors import DeadlineExceeded, EngineError
from pyshim.io import ProcessIO
from pyshim.process.config import has_private_pid_namespace, read_spec
from pyshim.process.files import ContainerFiles
from pyshim.reaper import Exit, Reaper, exit_status, resolve_executable
from pyshim.runtime import (
    KILL_WAIT,
    OCIRuntime,
    OCIRuntimeError,
    RuntimeNotFound,
    RuntimeTimeout,
    Stdio,
    failed,
    last_log_error,
    log_size,
    not_started,
    timed_out,
)

__all__ = ["CreateJob", "CreateReport", "create"]

log = logging.getLogger("pyshim.container")

#: The child's bound beyond the runtime's own time limit: config.json, mounts (a fuse helper
#: may take up to a minute), the pid file and cgroup.
CHILD_SLACK = 90.0
#: Longest text kept of one error (the report must fit a pipe buffer: the child writes it
#: before it exits, and nobody reads before that).
MAX_TEXT = 8192
#: Signals the monitor handles; the child gets the default actions back.
_HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
            signal.SIGUSR2)
_RUNTIME_ERRORS = {kind.__name__: kind for kind in (OCIRuntimeError, RuntimeNotFound,
                                                    RuntimeTimeout)}
_ENGINE_ERRORS = {name: kind for name, kind in vars(errors).items()
                  if isinstance(kind, type) and issubclass(kind, EngineError)}


@dataclass(frozen=True, slots=True)
class CreateJob:
    """What the child does: read the bundle's config.json, mount `mounts` on `rootfs_path`,
    call `before_runtime`, run `runtime create` with `io`'s runtime stdio, read the pid file
    and locate the init's cgroup. The child works the details out itself (command line,
    environment): code the monitor then never runs."""

    container_id: str
    bundle: str
    rootfs_path: str
    mounts: Sequence[mount.Mount]
    runtime: OCIRuntime
    files: ContainerFiles
    io: ProcessIO
    # Front-end bookkeeping right before the runtime (blocking; errors as EngineError).
    before_runtime: Callable[[], None] | None = None


@dataclass(slots=True)
class CreateReport:
    """What the child got done; `error` set when it failed (the rest says what to undo)."""

    pid: int = 0
    private_pid_namespace: bool = True
    mounted: bool = False
    runtime_called: bool = False
    cgroup: cgroups.Cgroup | None = None
    error: EngineError | None = None

    @classmethod
    def unknown(cls, job: CreateJob) -> CreateReport:
        """No word from the child: whatever it may have done is to be undone."""
        return cls(mounted=bool(job.mounts), runtime_called=True)


async def create(job: CreateJob, reaper: Reaper) -> CreateReport:
    """Fork the child for `job` and wait (bounded) for its report; a cancellation kills the
    child's group and waits for it briefly before it propagates."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError as error:
        os.close(read_end)
        os.close(write_end)
        raise EngineError(f"container {job.container_id}: cannot fork for create: {error}",
                          container_id=job.container_id, cause=str(error)) from error
    if pid == 0:
        _child(job, write_end)
    os.close(write_end)
    # Also here: a kill before the child ran setpgid must still reach its group.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    exited = reaper.watch(pid)  # before any loop turn: the reaper cannot miss the exit
    try:
        bound = job.runtime.config.timeout + CHILD_SLACK
        try:
            async with asyncio.timeout(bound):
                ended = await asyncio.shield(exited)
        except TimeoutError:
            await _stop(pid, exited)
            report = CreateReport.unknown(job)
            report.error = DeadlineExceeded(
                f"container {job.container_id}: create did not finish within {bound:g} s; "
                "killed it", container_id=job.container_id)
            return report
        except asyncio.CancelledError:
            await _stop(pid, exited)
            raise
        return _read_report(read_end, job, ended)
    finally:
        os.close(read_end)
        if not exited.done():
            reaper.forget(pid, exited)


async def _stop(pid: int, exited: asyncio.Future[Exit]) -> None:
    """SIGKILL the child's group (the child, the runtime, a runtime init still in it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(exited), KILL_WAIT)


def _read_report(fd: int, job: CreateJob, ended: Exit) -> CreateReport:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):  # a sibling child may hold the write end too
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    try:
        fields = marshal.loads(b"".join(chunks))
        if not isinstance(fields, dict):
            raise ValueError("not a report")
    except (EOFError, ValueError, TypeError):
        # Ended without a word (killed, or out of memory): whatever it started may still run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(ended.pid, signal.SIGKILL)
        report = CreateReport.unknown(job)
        report.error = EngineError(
            f"container {job.container_id}: the create child (pid {ended.pid}) ended without "
            f"a report (exit status {ended.status})", container_id=job.container_id,
            cause=f"exit status {ended.status}")
        return report
    report = CreateReport(
        pid=fields.get("pid", 0),
        private_pid_namespace=fields.get("private_pid_namespace", True),
        mounted=fields.get("mounted", False), runtime_called=fields.get("runtime_called", False))
    cgroup = fields.get("cgroup")
    if cgroup is not None:
        mode = cgroups.CgroupMode.V2 if cgroup[0] == "v2" else cgroups.CgroupMode.V1
        report.cgroup = cgroups.Cgroup(mode, cgroup[1], cgroup[2])
    if "error" in fields:
        report.error = _decode_error(fields["error"])
    return report


# --------------------------------------------------------------------------- in the child


def _child(job: CreateJob, report_fd: int) -> NoReturn:
    status = 1
    try:
        os.setpgid(0, 0)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)  # the monitor's loop's: a signal here must not wake it
        for signum in _HANDLED:
            signal.signal(signum, signal.SIG_DFL)
        stdio = job.io.runtime_stdio()
        fds = (stdio.stdin, stdio.stdout, stdio.stderr)
        _close_all_but({0, 1, 2, report_fd, *(fd for fd in fds if fd is not None)})
        fields: dict[str, Any] = {}
        try:
            _work(job, stdio, fields)
        except BaseException as error:
            fields["error"] = _encode_error(error, job.container_id)
        data = marshal.dumps(fields)
        while data:
            data = data[os.write(report_fd, data):]
        status = 0
        if fields.get("kill_group"):
            os.killpg(0, signal.SIGKILL)  # the runtime that overran, its children, and us
    except BaseException:
        log.exception("container %s: create child", job.container_id)
    finally:
        os._exit(status)


def _close_all_but(keep: set[int]) -> None:
    # The fds open now (a daemon has tens), not every number up to the limit (which may be
    # a million where close_range(2) is missing).
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, closed already
                os.close(int(name))


def _work(job: CreateJob, stdio: Stdio, fields: dict[str, Any]) -> None:
    """The in-process create's steps, with its errors (container.py)."""
    spec = read_spec(job.bundle, job.container_id)
    fields["private_pid_namespace"] = has_private_pid_namespace(spec)
    if job.mounts:
        os.makedirs(job.rootfs_path, mode=0o711, exist_ok=True)
        try:
            mount.mount_all(job.mounts, job.rootfs_path)  # undoes itself on failure
        except mount.MountError as error:
            raise EngineError(f"container {job.container_id}: {error}",
                              container_id=job.container_id, cause=error.reason) from error
        fields["mounted"] = True
    if job.before_runtime is not None:
        job.before_runtime()
    pid_file = job.files.pid_file(None)
    fields["runtime_called"] = True
    try:
        _run_runtime(job, stdio, pid_file)
    except RuntimeTimeout:
        fields["kill_group"] = True
        raise
    try:
        pid = read_pid(pid_file)
    except (OSError, ValueError) as error:
        raise EngineError(
            f"container {job.container_id}: runc create left no usable pid file: {error}",
            container_id=job.container_id, cause=str(error),
        ) from error
    fields["pid"] = pid
    with contextlib.suppress(Exception):  # the monitor looks again (and logs why) if not
        cgroup = cgroups.cgroup_of_pid(pid)
        fields["cgroup"] = (cgroup.mode.value, dict(cgroup.paths), cgroup.path)


def _run_runtime(job: CreateJob, stdio: Stdio, pid_file: str) -> None:
    """`runtime create`, waited for at most its time limit; OCIRuntimeError as
    OCIRuntime._run raises it."""
    config = job.runtime.config
    argv = job.runtime.create_argv(job.container_id, job.bundle, pid_file,
                                   job.io.console_socket)
    env = job.runtime.environment()
    error_log = config.errors_from
    log_start = log_size(error_log)
    # Blocked, so that its arrival waits for sigtimedwait (the runtime gets an empty mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        executable = resolve_executable(argv[0], env)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, devnull if fd is None else fd, target)
                   for target, fd in enumerate((stdio.stdin, stdio.stdout, stdio.stderr))]
        os.chdir(config.cwd or job.bundle)
        pid = os.posix_spawn(executable, argv, dict(env), file_actions=actions,
                             setsigdef=(signal.SIGPIPE, *_HANDLED), setsigmask=())
    except OSError as error:
        raise not_started("create", config.binary, error) from error
    status = _wait(pid, config.timeout)
    if status is None:
        raise timed_out("create", config.binary, config.timeout)
    if status != 0:
        raise failed("create", config.binary, status, b"", last_log_error(error_log, log_start))


def _wait(pid: int, timeout: float) -> int | None:
    """pid's exit status, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_status(wait_status)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        signal.sigtimedwait({signal.SIGCHLD}, remaining)


def _encode_error(error: BaseException, container_id: str) -> tuple[Any, ...]:
    if isinstance(error, OCIRuntimeError):
        return ("runtime", type(error).__name__, error.command, error.message[:MAX_TEXT],
                error.status)
    if isinstance(error, EngineError):
        return ("engine", type(error).__name__, error.message[:MAX_TEXT], error.container_id,
                error.process_id, error.cause[:MAX_TEXT])
    text = str(error)[:MAX_TEXT] or type(error).__name__
    return ("engine", "EngineError", f"container {container_id}: create: {text}", container_id,
            "", text)


def _decode_error(encoded: tuple[Any, ...]) -> EngineError:
    if encoded[0] == "runtime":
        _, name, command, message, status = encoded
        return _RUNTIME_ERRORS.get(name, OCIRuntimeError)(command, message, status)
    _, name, message, container_id, process_id, cause = encoded
    kind = _ENGINE_ERRORS.get(name, EngineError)
    return kind(message, container_id=container_id, process_id=process_id, cause=cause)
