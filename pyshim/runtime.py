"""The OCI runtime command line (runc): one method per command, spawned through the reaper.

Owns argument order, runc's JSON log and the errors built from it (carrying runc's own
message). Never waits for a child itself and never decides container state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyshim.bundle import DEFAULT_BINARY, DEFAULT_ROOT
from pyshim.errors import DeadlineExceeded, RuntimeFailed
from pyshim.options import DEFAULT_RUNC_TIMEOUT
from pyshim.reaper import Exit, Reaper

# A runc command taking longer than this is hung (a stuck hook, a frozen cgroup): killed, and
# the call fails with a clear error instead of wedging the process (runtime option
# `runc_timeout`). Generous: hooks may pull images or set up networks.
DEFAULT_TIMEOUT = DEFAULT_RUNC_TIMEOUT
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


@dataclass(slots=True)
class Runc:
    """One runc configuration (binary, state root, log) for one container."""

    reaper: Reaper
    binary: str = DEFAULT_BINARY
    root: str = DEFAULT_ROOT
    log_path: str | None = None
    systemd_cgroup: bool = False
    criu: str = ""
    timeout: float = DEFAULT_TIMEOUT
    env: Mapping[str, str] = field(default_factory=lambda: _runc_environment())

    def _global_args(self) -> list[str]:
        args = [self.binary, "--root", self.root]
        if self.log_path:
            args += ["--log", self.log_path, "--log-format", "json"]
        if self.criu:
            args += ["--criu", self.criu]
        if self.systemd_cgroup:
            args.append("--systemd-cgroup")
        return args

    # ------------------------------------------------------------------------- commands

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
        no_pivot: bool = False,
        no_new_keyring: bool = False,
    ) -> None:
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        if no_new_keyring:
            args.append("--no-new-keyring")
        await self._run("create", [*args, container_id], stdio=stdio, cwd=bundle, use_log=True)

    async def start(self, container_id: str) -> None:
        await self._run("start", ["start", container_id], use_log=True)

    async def exec(
        self,
        container_id: str,
        process_spec: Mapping[str, object],
        pid_file: str,
        stdio: Stdio,
        *,
        console_socket: str | None = None,
        spec_path: str,
    ) -> None:
        """`spec_path`: where the process JSON is written for runc (a new file of ours, 0600:
        it holds the exec's environment), removed afterwards."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(spec_path, flags, 0o600)
        try:
            with os.fdopen(fd, "w") as spec_file:
                json.dump(process_spec, spec_file)
            args = ["exec", "--process", spec_path]
            if console_socket:
                args += ["--console-socket", console_socket]
            args += ["--detach", "--pid-file", pid_file, container_id]
            await self._run("exec", args, stdio=stdio, use_log=True)
        finally:
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
    ) -> bytes:
        """Run runc and return its stdout; raise OCIRuntimeError with runc's message on failure.

        Commands given the container's stdio write nothing of their own there; others have
        their combined output captured for the error message. runc gets `timeout` seconds;
        then it (its whole process group) is killed and RuntimeTimeout raised. A caller
        cancelled meanwhile kills it too: no runc outlives the call that started it.
        """
        loop = asyncio.get_running_loop()
        argv = [*self._global_args(), *args]
        pipes: list[int] = []  # every fd of ours still open; closed whatever happens
        try:
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            pipes += [out_read, out_write]
            in_read = in_write = None
            if input is not None:
                in_read, in_write = os.pipe2(os.O_CLOEXEC)
                pipes += [in_read, in_write]
            log_start = _log_size(self.log_path) if use_log else 0
            try:
                pid, exited = self.reaper.spawn(
                    argv,
                    env=self.env,
                    cwd=cwd,
                    stdin=stdio.stdin if stdio else in_read,
                    stdout=stdio.stdout if stdio else out_write,
                    stderr=stdio.stderr if stdio else out_write,
                    # A Ctrl-C meant for a foreground `pyshim run` must not kill runc midway,
                    # and a timeout kills runc's children (runc init) with it.
                    new_process_group=True,
                )
            except FileNotFoundError as error:
                raise RuntimeNotFound(
                    command, f'runc binary "{self.binary}" not found: {error}'
                ) from error
            except OSError as error:
                raise OCIRuntimeError(command, f"cannot run {self.binary}: {error}") from error
            _close(pipes, out_write, in_read)
            try:
                async with asyncio.timeout(self.timeout):
                    if in_write is not None:
                        assert input is not None
                        await _write_all(loop, in_write, input)
                        _close(pipes, in_write)  # runc sees EOF
                    output = await _read_all(loop, out_read)
                    result = await exited
            except TimeoutError:
                await _kill_group(pid, exited)
                raise RuntimeTimeout(
                    command,
                    f"{self.binary} {command} did not finish within {self.timeout:g} s; "
                    "killed it",
                ) from None
            except BaseException:
                await _kill_group(pid, exited)
                raise
        finally:
            _close(pipes, *pipes)
        if result.status != 0:
            message = _last_log_error(self.log_path, log_start) if use_log else None
            if not message:
                text = output.decode(errors="replace").strip()
                message = f"{self.binary} did not terminate successfully: exit status " + (
                    f"{result.status}: {text}" if text else str(result.status)
                )
            raise OCIRuntimeError(command, message, result.status)
        return output


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
    return {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}


def _log_size(path: str | None) -> int:
    if not path:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _last_log_error(path: str | None, start: int) -> str | None:
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
