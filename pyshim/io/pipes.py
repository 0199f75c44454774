"""Anonymous pipes between the container and endpoints we opened: FIFOs and `file://`.

The container writes into a pipe; a relay moves the bytes to the client's FIFO or file (spec
§6.2, §6.3), and stdin the other way. Owns those pipes and relays, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from pyshim.io.base import ProcessIO, StdioConfig
from pyshim.io.fifo import InputSource, OutputTarget, open_input, open_output
from pyshim.io.log_relay import LogRelay, LogSink
from pyshim.io.relay import Relay
from pyshim.io.spool import Spool
from pyshim.io.stdio_pipes import StdioPipes
from pyshim.runtime import Stdio


class PipeIO(ProcessIO):
    """Anonymous pipes to the container, relayed to/from already opened endpoints."""

    def __init__(
        self,
        *,
        stdin: InputSource | None = None,
        stdout: OutputTarget | LogSink | None = None,
        stderr: OutputTarget | LogSink | None = None,
        uid: int = -1,
        gid: int = -1,
        name: str = "process",
    ) -> None:
        self._stdin_source = stdin
        self._outputs = {"stdout": stdout, "stderr": stderr}
        self._name = name
        self._relays: dict[str, Relay | LogRelay] = {}
        # Our ends, relayed once started; the container's ends, closed once runc has them.
        self._pipes: StdioPipes | None = None
        try:
            self._pipes = StdioPipes(stdin=stdin is not None, stdout=stdout is not None,
                                     stderr=stderr is not None)
            if uid != -1 or gid != -1:
                self._pipes.chown(uid, gid)
        except BaseException:
            self._close_everything()
            raise

    @property
    def pipes(self) -> StdioPipes:
        assert self._pipes is not None
        return self._pipes

    def runtime_stdio(self) -> Stdio:
        return self.pipes.runtime_stdio()

    async def start(self) -> None:
        self.pipes.close_theirs()
        if self._stdin_source is not None:
            # The FIFO fd belongs to the InputSource; our pipe end is closed at EOF so the
            # container sees EOF too.
            self._start_relay("stdin", Relay(self._stdin_source.fd, self.pipes.take("stdin"),
                                             name=f"{self._name} stdin", close_src=False))
        for stream, target in self._outputs.items():
            if target is None:
                continue
            src = self.pipes.take(stream)
            if isinstance(target, LogSink):
                self._start_relay(stream, LogRelay(src, target, name=f"{self._name} {stream} log"))
            else:
                # The target closes its own fds (write end + keepalive reader) when copying ends.
                self._start_relay(stream, Relay(src, target.fd, name=f"{self._name} {stream}",
                                                close_dst=False, on_done=target.close,
                                                spool=target.spool))

    def unread_stderr(self, limit: int = 8191) -> bytes:
        return self.pipes.unread_stderr(limit)

    def _start_relay(self, stream: str, relay: Relay | LogRelay) -> None:
        self._relays[stream] = relay
        relay.start()

    async def wait_output(self) -> None:
        await asyncio.gather(
            *(relay.drained() for stream, relay in self._relays.items() if stream != "stdin")
        )

    def output_drained(self) -> bool:
        return all(relay.is_drained() for stream, relay in self._relays.items()
                   if stream != "stdin")

    def close_stdin(self) -> None:
        if self._stdin_source is not None:
            self._stdin_source.close_keepalive()

    async def close(self, drain_timeout: float = 0.0) -> None:
        outputs = [relay for stream, relay in self._relays.items() if stream != "stdin"]
        if drain_timeout > 0 and outputs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(relay.settled() for relay in outputs)), drain_timeout
                )
        for relay in self._relays.values():
            await relay.close()
        self._relays.clear()
        self._close_everything()

    def _close_everything(self) -> None:
        if self._pipes is not None:
            self._pipes.close()
        if self._stdin_source is not None:
            self._stdin_source.close()
        for target in self._outputs.values():
            if target is not None:
                target.close()


def open_file_target(path: str) -> OutputTarget:
    """`file://` (spec §6.3): parents created 0755, the file appended to (created 0644)."""
    os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
    return OutputTarget(os.open(path, flags, 0o644))


def file_io(config: StdioConfig, path: str, *, uid: int, gid: int, name: str) -> PipeIO:
    """stdout and stderr both appended to one file; no stdin."""
    stdout = open_file_target(path)
    try:
        stderr = open_file_target(path) if config.stderr else None
    except BaseException:
        stdout.close()
        raise
    return PipeIO(stdout=stdout, stderr=stderr, uid=uid, gid=gid, name=name)


def fifo_path(value: str) -> str:
    return value[len("fifo://") :] if value.startswith("fifo://") else value


def fifo_io(
    config: StdioConfig, *, uid: int, gid: int, name: str,
    spool: Callable[[str], Spool | None] = lambda _stream: None,
) -> PipeIO:
    """The common case (spec §6.2): each non-empty string is a FIFO the client opened.
    `spool(stream)` gives the spool that holds a stream's output while its FIFO has no reader."""
    opened: list[InputSource | OutputTarget] = []
    try:
        stdin = open_input(fifo_path(config.stdin)) if config.stdin else None
        if stdin is not None:
            opened.append(stdin)
        stdout = open_output(fifo_path(config.stdout), spool("stdout")) if config.stdout else None
        if stdout is not None:
            opened.append(stdout)
        stderr = (open_output(fifo_path(config.stderr), spool("stderr"))
                  if config.stderr else None)
        if stderr is not None:
            opened.append(stderr)
        return PipeIO(stdin=stdin, stdout=stdout, stderr=stderr, uid=uid, gid=gid, name=name)
    except BaseException:
        for endpoint in opened:
            endpoint.close()
        raise
