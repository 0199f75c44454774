"""The OCI runtime command line (runc): one method per command, spawned through the reaper.

`RuntimeConfig` says how to invoke it (binary, global flags, extra runtime args and options,
time limit): the containerd front end fills it from runc Options, the conmon front end from its
argv (spec conmon-compat §5.1). `OCIRuntime(reaper, config)` runs the commands. Owns argument
order, the runtime's JSON error log and the errors built from it (carrying the runtime's own
message: OCIRuntimeError, a RuntimeFailed; RuntimeTimeout, also a DeadlineExceeded). Every
command is time-limited. Never waits for a child itself and never decides container state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyshim import environ_table
from pyshim.bundle import DEFAULT_BINARY
from pyshim.errors import DeadlineExceeded, RuntimeFailed
from pyshim.reaper import Exit, Reaper

# A runc command taking longer than this is hung (a stuck hook, a frozen cgroup): killed, and
# the call fails with a clear error instead of wedging the process (runtime option
# `runc_timeout`). Generous: hooks may pull images or set up networks.
DEFAULT_TIMEOUT = 120.0
# After SIGKILL, how long to wait for runc to be reaped before the error is returned anyway.
KILL_WAIT = 5.0


class OCIRuntimeError(RuntimeFailed):
    """A runc command failed. `message` (and `cause`) is runc's last error line, or its
    output; the process layer wraps it with the container and process it was about."""

    def __init__(self, command: str, message: str, status: int | None = None) -> None:
        super().__init__(message, cause=message)
        self.command = command
        self.status = status
        self.exit_status = status


class RuntimeNotFound(OCIRuntimeError):
    """The runc binary itself is missing."""


class RuntimeTimeout(OCIRuntimeError, DeadlineExceeded):
    """runc did not finish within its time limit and was killed."""


@dataclass(frozen=True, slots=True)
class Stdio:
    """File descriptors runc (and through it the container) gets as 0, 1 and 2."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """How the OCI runtime is invoked; every field is optional but the binary.

    argv: `BINARY [--root R] [--log L --log-format F] [--criu C] [--systemd-cgroup]
    [GLOBAL_ARGS…] COMMAND [command flags] [COMMAND_ARGS…] [--console-socket S] ID`, where
    COMMAND_ARGS (conmon's --runtime-opt) follow the flags of create, restore and exec only.
    """

    binary: str = DEFAULT_BINARY
    root: str | None = None  # --root: the runtime's state directory (None: its default)
    log_path: str | None = None  # --log (with --log-format log_format); errors are read from it
    log_format: str = "json"
    criu: str = ""
    systemd_cgroup: bool = False
    global_args: tuple[str, ...] = ()  # conmon's --runtime-arg, verbatim and in order
    command_args: tuple[str, ...] = ()  # conmon's --runtime-opt, verbatim and in order
    no_pivot: bool = False  # create/restore --no-pivot
    no_new_keyring: bool = False  # create/restore --no-new-keyring
    # create/exec --preserve-fds N: our fds 3 … 3+N-1 are passed on to the container's process.
    preserve_fds: int = 0
    # fds of ours the runtime inherits at the same numbers for create/restore/exec, no flag
    # added (conmon: the fds it was started with; --preserve-fds arrives in command_args).
    pass_fds: tuple[int, ...] = ()
    # The runtime's working directory: None is the bundle for create/restore (as runc-v2),
    # ours for the other commands (conmon: always its own cwd).
    cwd: str | None = None
    # A JSON log to read the runtime's error messages from when the front end passes --log
    # among global_args itself (podman's `--runtime-arg --log …`); log_path is used if set.
    error_log: str | None = None
    timeout: float = DEFAULT_TIMEOUT  # seconds before a command is killed (RuntimeTimeout)
    # The runtime's environment; None: ours without NOTIFY_SOCKET.
    env: Mapping[str, str] | None = None

    @property
    def errors_from(self) -> str | None:
        return self.log_path or self.error_log


@dataclass(slots=True)
class OCIRuntime:
    """Runs one runtime configuration's commands for the containers of a front end."""

    reaper: Reaper
    config: RuntimeConfig

    def _global_args(self) -> list[str]:
        config = self.config
        args = [config.binary]
        if config.root:
            args += ["--root", config.root]
        if config.log_path:
            args += ["--log", config.log_path, "--log-format", config.log_format]
        if config.criu:
            args += ["--criu", config.criu]
        if config.systemd_cgroup:
            args.append("--systemd-cgroup")
        return [*args, *config.global_args]

    def _command_tail(self, container_id: str, console_socket: str | None) -> list[str]:
        """What ends create, restore and exec: extra runtime options, console socket, id."""
        tail = list(self.config.command_args)
        if console_socket:
            tail += ["--console-socket", console_socket]
        return [*tail, container_id]

    def _preserved_fds(self) -> tuple[list[str], dict[int, int]]:
        """(--preserve-fds flag, {fd: fd} the runtime inherits) for create/restore/exec."""
        count = self.config.preserve_fds
        inherited = {fd: fd for fd in self.config.pass_fds}
        if count <= 0:
            return [], inherited
        return ["--preserve-fds", str(count)], {
            **inherited, **{fd: fd for fd in range(3, 3 + count)}}

    # ------------------------------------------------------------------------- commands

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
    ) -> None:
        preserve, fd_map = self._preserved_fds()
        await self._run("create", [*self._create_flags(bundle, pid_file), *preserve,
                                   *self._command_tail(container_id, console_socket)],
                        stdio=stdio, cwd=self.config.cwd or bundle, use_log=True,
                        fd_map=fd_map)

    def create_argv(self, container_id: str, bundle: str, pid_file: str,
                    console_socket: str | None) -> list[str]:
        """`create`'s whole command line, for running it elsewhere (a forked child: see
        process/oneshot.py); without --preserve-fds, which only `create()` passes on."""
        return [*self._global_args(), *self._create_flags(bundle, pid_file),
                *self._command_tail(container_id, console_socket)]

    def environment(self) -> Mapping[str, str]:
        """The runtime's environment (the configured one, or ours without NOTIFY_SOCKET)."""
        return self.config.env if self.config.env is not None else _runc_environment()

    def _create_flags(self, bundle: str, pid_file: str) -> list[str]:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if self.config.no_pivot:
            args.append("--no-pivot")
        if self.config.no_new_keyring:
            args.append("--no-new-keyring")
        return args

    async def restore(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        stdio: Stdio,
        *,
        image_path: str,
        work_path: str | None = None,
        console_socket: str | None = None,
    ) -> None:
        """`restore --detach` from a checkpoint image (conmon's --restore)."""
        args = ["restore", "--bundle", bundle, "--pid-file", pid_file]
        if self.config.no_pivot:
            args.append("--no-pivot")
        if self.config.no_new_keyring:
            args.append("--no-new-keyring")
        args += ["--detach", "--image-path", image_path, "--work-path", work_path or bundle]
        _, fd_map = self._preserved_fds()
        await self._run("restore", [*args, *self._command_tail(container_id, console_socket)],
                        stdio=stdio, cwd=self.config.cwd or bundle, use_log=True,
                        fd_map=fd_map)

    async def start(self, container_id: str) -> None:
        await self._run("start", ["start", container_id], use_log=True)

    async def exec(
        self,
        container_id: str,
        process_spec: Mapping[str, object] | None,
        pid_file: str,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
        spec_path: str,
    ) -> None:
        """`exec --detach` of the process JSON at `spec_path`. With `process_spec` the file is
        ours: written first (a new file, 0600: it holds the exec's environment) and removed
        afterwards; with None it exists already (conmon's --exec-process-spec) and stays."""
        if process_spec is not None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(spec_path, flags, 0o600)
            # The bytes json.dump would write, but through json.dumps' C encoder: json.dump
            # runs the pure-Python one (and a text file's codec), copied into each daemon.
            data = json.dumps(process_spec).encode()
            try:
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
        try:
            args = ["exec", "--pid-file", pid_file, "--process", spec_path, "--detach"]
            preserve, fd_map = self._preserved_fds()
            await self._run("exec", [*args, *preserve,
                                     *self._command_tail(container_id, console_socket)],
                            stdio=stdio, use_log=True, fd_map=fd_map)
        finally:
            if process_spec is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec_path)

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(signal)]
        await self._run("kill", args)

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        args = ["delete", *(["--force"] if force else []), container_id]
        await self._run("delete", args, use_log=True)

    async def pause(self, container_id: str) -> None:
        await self._run("pause", ["pause", container_id], use_log=True)

    async def resume(self, container_id: str) -> None:
        await self._run("resume", ["resume", container_id], use_log=True)

    async def update(self, container_id: str, resources: Mapping[str, object]) -> None:
        data = json.dumps(resources).encode()
        await self._run("update", ["update", "--resources", "-", container_id], input=data)

    async def ps(self, container_id: str) -> list[int]:
        output = await self._run("ps", ["ps", "--format", "json", container_id])
        try:
            pids = json.loads(output or b"[]")
        except ValueError as error:
            raise OCIRuntimeError("ps", f"runc ps printed no JSON list: {output!r}") from error
        return [int(pid) for pid in pids or []]

    async def state(self, container_id: str) -> dict[str, object]:
        output = await self._run("state", ["state", container_id])
        state = json.loads(output)
        assert isinstance(state, dict)
        return state

    # --------------------------------------------------------------------------- running

    async def _run(
        self,
        command: str,
        args: Sequence[str],
        *,
        stdio: Stdio | None = None,
        cwd: str | None = None,
        input: bytes | None = None,
        use_log: bool = False,
        fd_map: Mapping[int, int] | None = None,
    ) -> bytes:
        """Run runc and return its stdout; raise OCIRuntimeError with runc's message on failure.

        Commands given the container's stdio write nothing of their own there; others have
        their combined output captured for the error message. runc gets `timeout` seconds;
        then it (its whole process group) is killed and RuntimeTimeout raised. A caller
        cancelled meanwhile kills it too: no runc outlives the call that started it.
        """
        loop = asyncio.get_running_loop()
        config = self.config
        argv = [*self._global_args(), *args]
        cwd = cwd or config.cwd
        error_log = config.errors_from if use_log else None
        pipes: list[int] = []  # every fd of ours still open; closed whatever happens
        try:
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            pipes += [out_read, out_write]
            in_read = in_write = None
            if input is not None:
                in_read, in_write = os.pipe2(os.O_CLOEXEC)
                pipes += [in_read, in_write]
            log_start = log_size(error_log)
            try:
                pid, exited = self.reaper.spawn(
                    argv,
                    env=config.env if config.env is not None else _runc_environment(),
                    cwd=cwd,
                    stdin=stdio.stdin if stdio else in_read,
                    stdout=stdio.stdout if stdio else out_write,
                    stderr=stdio.stderr if stdio else out_write,
                    # A Ctrl-C meant for a foreground `pyshim run` must not kill runc midway,
                    # and a timeout kills runc's children (runc init) with it.
                    new_process_group=True,
                    fd_map=fd_map,
                )
            except OSError as error:
                raise not_started(command, config.binary, error) from error
            _close(pipes, out_write, in_read)
            try:
                async with asyncio.timeout(config.timeout):
                    if in_write is not None:
                        assert input is not None
                        await _write_all(loop, in_write, input)
                        _close(pipes, in_write)  # runc sees EOF
                    output = await _read_all(loop, out_read)
                    result = await exited
            except TimeoutError:
                await _kill_group(pid, exited)
                raise timed_out(command, config.binary, config.timeout) from None
            except BaseException:
                await _kill_group(pid, exited)
                raise
        finally:
            _close(pipes, *pipes)
        if result.status != 0:
            raise failed(command, config.binary, result.status, output,
                         last_log_error(error_log, log_start))
        return output


# The errors of a runc command, also built by a command run elsewhere (process/oneshot.py).


def not_started(command: str, binary: str, error: OSError) -> OCIRuntimeError:
    if isinstance(error, FileNotFoundError):
        return RuntimeNotFound(command, f'runc binary "{binary}" not found: {error}')
    return OCIRuntimeError(command, f"cannot run {binary}: {error}")


def timed_out(command: str, binary: str, timeout: float) -> RuntimeTimeout:
    return RuntimeTimeout(
        command, f"{binary} {command} did not finish within {timeout:g} s; killed it")


def failed(command: str, binary: str, status: int, output: bytes,
           logged: str | None) -> OCIRuntimeError:
    """runc exited with `status`: its last logged error, else what it printed."""
    message = logged
    if not message:
        text = output.decode(errors="replace").strip()
        message = f"{binary} did not terminate successfully: exit status " + (
            f"{status}: {text}" if text else str(status)
        )
    return OCIRuntimeError(command, message, status)


def _close(still_open: list[int], *fds: int | None) -> None:
    for fd in fds:
        if fd is not None and fd in still_open:
            still_open.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)


async def _kill_group(pid: int, exited: asyncio.Future[Exit]) -> None:
    """SIGKILL runc's process group and wait (briefly) for runc itself to be reaped."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(exited), KILL_WAIT)


def _runc_environment() -> dict[str, str]:
    # NOTIFY_SOCKET changes runc's behaviour (it would wait for the container's sd_notify).
    return environ_table.copy_without("NOTIFY_SOCKET")  # not os.environ.items(): see there


def log_size(path: str | None) -> int:
    """Where runc's next log lines will start (0 without a log)."""
    if not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def last_log_error(path: str | None, start: int) -> str | None:
    """The last `"level":"error"` message runc wrote to its JSON log since offset start."""
    if not path:
        return None
    try:
        with open(path, "rb") as log_file:
            log_file.seek(start)
            data = log_file.read()
    except OSError:
        return None
    message = None
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error" and entry.get("msg"):
            message = str(entry["msg"])
    return message


async def _read_all(loop: asyncio.AbstractEventLoop, fd: int) -> bytes:
    """Read a pipe to EOF without blocking the loop (the caller closes fd)."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                readable.clear()
                await readable.wait()
                continue
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        loop.remove_reader(fd)


async def _write_all(loop: asyncio.AbstractEventLoop, fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    writable = asyncio.Event()
    loop.add_writer(fd, writable.set)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                writable.clear()
                await writable.wait()
            except BrokenPipeError:
                return
    finally:
        loop.remove_writer(fd)
