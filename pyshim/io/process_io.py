"""ProcessIO: the stdio of one container process, from runc's fds to the client's endpoints.

Owns pipe creation, the relays and their order at exit and delete (no byte written before the
exit is lost; a background child holding a pipe never delays the exit report). Knows nothing
about containerd requests or process state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pyshim.io.fifo import InputSource, OutputTarget, open_input, open_output
from pyshim.io.relay import Relay
from pyshim.runtime import Stdio


class UnsupportedStdio(Exception):
    """The stdio strings ask for something we cannot do; `unimplemented` if it is a feature
    not built yet rather than bad input."""

    def __init__(self, message: str, *, unimplemented: bool = False) -> None:
        super().__init__(message)
        self.unimplemented = unimplemented


@dataclass(frozen=True, slots=True)
class StdioConfig:
    """containerd's stdio request: three strings (FIFO paths or URIs) and the terminal flag."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def is_null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr)


class ProcessIO:
    """The interface the process layer drives; this base class is the no-I/O case."""

    def runtime_stdio(self) -> Stdio:
        """fds runc passes on as the process's 0, 1, 2 (None = /dev/null)."""
        return Stdio()

    @property
    def console_socket(self) -> str | None:
        return None

    async def start(self) -> None:
        """After runc create/exec succeeded: let go of the container's ends, start relaying."""

    async def wait_output(self) -> None:
        """After the process exited: until every byte it wrote has been relayed."""

    def close_stdin(self) -> None:
        """CloseIO: the container sees EOF once the client's writer is gone too."""

    def resize(self, width: int, height: int) -> None:
        """ResizePty; without a terminal there is nothing to resize."""

    async def close(self, drain_timeout: float = 0.0) -> None:
        """At delete (or a failed create): wait up to drain_timeout for the relays to reach
        EOF, then stop them and release every fd."""


class NullIO(ProcessIO):
    pass


class PipeIO(ProcessIO):
    """Anonymous pipes to the container, relayed to/from already opened endpoints."""

    def __init__(
        self,
        *,
        stdin: InputSource | None = None,
        stdout: OutputTarget | None = None,
        stderr: OutputTarget | None = None,
        uid: int = -1,
        gid: int = -1,
        name: str = "process",
    ) -> None:
        self._stdin_source = stdin
        self._outputs = {"stdout": stdout, "stderr": stderr}
        self._name = name
        self._relays: dict[str, Relay] = {}
        # Our ends, relayed once started; the container's ends, closed once runc has them.
        self._ours: dict[str, int] = {}
        self._theirs: dict[str, int] = {}
        try:
            if stdin is not None:
                read, write = os.pipe2(os.O_CLOEXEC)
                self._theirs["stdin"], self._ours["stdin"] = read, write
            for stream, target in self._outputs.items():
                if target is not None:
                    read, write = os.pipe2(os.O_CLOEXEC)
                    self._ours[stream], self._theirs[stream] = read, write
            if uid != -1 or gid != -1:
                for fd in self._theirs.values():
                    os.fchown(fd, uid, gid)
        except BaseException:
            self._close_everything()
            raise

    def runtime_stdio(self) -> Stdio:
        return Stdio(
            self._theirs.get("stdin"), self._theirs.get("stdout"), self._theirs.get("stderr")
        )

    async def start(self) -> None:
        for fd in self._theirs.values():
            os.close(fd)
        self._theirs.clear()
        if self._stdin_source is not None:
            self._add_relay("stdin", self._stdin_source.fd, self._ours.pop("stdin"))
        for stream, target in self._outputs.items():
            if target is not None:
                self._add_relay(stream, self._ours.pop(stream), target.fd, target.close)

    def _add_relay(
        self, stream: str, src: int, dst: int, on_done: Callable[[], None] | None = None
    ) -> None:
        if stream == "stdin":
            # The FIFO fd belongs to the InputSource; our pipe end is closed at EOF so the
            # container sees EOF too.
            relay = Relay(src, dst, name=f"{self._name} stdin", close_src=False)
        else:
            # The target closes its own fds (write end + keepalive reader) when copying ends.
            relay = Relay(src, dst, name=f"{self._name} {stream}", close_dst=False,
                          on_done=on_done)
        self._relays[stream] = relay
        relay.start()


    async def wait_output(self) -> None:
        await asyncio.gather(
            *(relay.drained() for stream, relay in self._relays.items() if stream != "stdin")
        )

    def close_stdin(self) -> None:
        if self._stdin_source is not None:
            self._stdin_source.close_keepalive()

    async def close(self, drain_timeout: float = 0.0) -> None:
        outputs = [relay for stream, relay in self._relays.items() if stream != "stdin"]
        if drain_timeout > 0 and outputs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(relay.wait() for relay in outputs)), drain_timeout
                )
        for relay in self._relays.values():
            await relay.close()
        self._relays.clear()
        self._close_everything()

    def _close_everything(self) -> None:
        for fd in (*self._ours.values(), *self._theirs.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ours.clear()
        self._theirs.clear()
        if self._stdin_source is not None:
            self._stdin_source.close()
        for target in self._outputs.values():
            if target is not None:
                target.close()


def _open_file_uri(path: str) -> OutputTarget:
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    return OutputTarget(os.open(path, flags, 0o644))


def open_process_io(
    config: StdioConfig, *, uid: int = -1, gid: int = -1, name: str = "process"
) -> ProcessIO:
    """The ProcessIO for containerd's stdio strings (spec §6.1); the mode follows `stdout`.

    Raises UnsupportedStdio for unknown schemes and not-yet-built modes, OSError (with the
    path) when an endpoint cannot be opened.
    """
    if config.terminal:
        raise UnsupportedStdio(
            "terminal I/O is not supported by this pyshim version yet", unimplemented=True
        )
    if config.is_null:
        return NullIO()
    scheme = urlsplit(config.stdout).scheme if "://" in config.stdout else ""
    if scheme in ("", "fifo"):
        return _fifo_io(config, uid, gid, name)
    if scheme == "file":
        path = unquote(urlsplit(config.stdout).path)
        if not os.path.isabs(path):
            raise UnsupportedStdio(f"file:// stdio needs an absolute path, got {config.stdout!r}")
        stdout = _open_file_uri(path)
        try:
            stderr = _open_file_uri(path) if config.stderr else None
        except BaseException:
            stdout.close()
            raise
        return PipeIO(stdout=stdout, stderr=stderr, uid=uid, gid=gid, name=name)
    if scheme == "binary":
        raise UnsupportedStdio(
            "binary:// logging is not supported by this pyshim version yet", unimplemented=True
        )
    raise UnsupportedStdio(f"unknown STDIO scheme {scheme} in {config.stdout!r}")


def _fifo_path(value: str) -> str:
    return value[len("fifo://") :] if value.startswith("fifo://") else value


def _fifo_io(config: StdioConfig, uid: int, gid: int, name: str) -> PipeIO:
    opened: list[InputSource | OutputTarget] = []
    try:
        stdin = open_input(_fifo_path(config.stdin)) if config.stdin else None
        if stdin is not None:
            opened.append(stdin)
        stdout = open_output(_fifo_path(config.stdout)) if config.stdout else None
        if stdout is not None:
            opened.append(stdout)
        stderr = open_output(_fifo_path(config.stderr)) if config.stderr else None
        if stderr is not None:
            opened.append(stderr)
        return PipeIO(stdin=stdin, stdout=stdout, stderr=stderr, uid=uid, gid=gid, name=name)
    except BaseException:
        for endpoint in opened:
            endpoint.close()
        raise
