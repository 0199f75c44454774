"""A process with a terminal: runc gives us the pty master; we relay it (spec §6.5).

stdin FIFO → master, master → the stdout endpoint (a FIFO, a file, or a logging binary's
pipe). Owns the master and its relays; never the process. There is no stderr on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from pyshim.io.base import ProcessIO
from pyshim.io.console import ConsoleSocket, end_of_file_character, resize
from pyshim.io.fifo import InputSource, OutputTarget
from pyshim.io.relay import Relay

log = logging.getLogger("pyshim.io")


class TerminalIO(ProcessIO):
    def __init__(
        self,
        *,
        stdin: InputSource | None = None,
        stdout: OutputTarget | None = None,
        name: str = "process",
    ) -> None:
        self._stdin_source = stdin
        # Nobody to read the terminal still needs a reader, or the container blocks in write.
        self._stdout = stdout if stdout is not None else OutputTarget(
            os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        )
        self._name = name
        self._socket: ConsoleSocket | None = None
        self._master: int | None = None
        self._output: Relay | None = None
        self._input: Relay | None = None
        self._closing = False

    async def prepare(self) -> None:
        self._socket = ConsoleSocket()

    @property
    def console_socket(self) -> str | None:
        return self._socket.path if self._socket is not None else None

    async def start(self) -> None:
        assert self._socket is not None, "prepare() first"
        try:
            self._master = await self._socket.receive_master()
        finally:
            self._socket.close()
        # Each relay owns a dup, so closing one direction never closes the other's fd.
        self._output = Relay(
            os.dup(self._master), self._stdout.fd, name=f"{self._name} terminal",
            close_dst=False, on_done=self._stdout.close, spool=self._stdout.spool,
        )
        self._output.start()
        if self._stdin_source is not None:
            self._input = Relay(
                self._stdin_source.fd, os.dup(self._master), name=f"{self._name} stdin",
                close_src=False, on_done=self._stdin_ended,
            )
            self._input.start()

    def _stdin_ended(self) -> None:
        # A terminal has no EOF of its own: the line discipline turns VEOF into one, which is
        # what the process would see if a user pressed ^D. (runc-v2 hangs the terminal up
        # instead, which also kills the process's output.)
        if self._closing or self._master is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._master, end_of_file_character(self._master))

    async def wait_output(self) -> None:
        if self._output is not None:
            await self._output.drained()

    def output_drained(self) -> bool:
        return self._output is None or self._output.is_drained()

    def close_stdin(self) -> None:
        if self._stdin_source is not None:
            self._stdin_source.close_keepalive()

    def resize(self, width: int, height: int) -> None:
        if self._master is None:
            raise OSError(f"{self._name}: the terminal is not open yet")
        resize(self._master, width, height)

    async def close(self, drain_timeout: float = 0.0) -> None:
        if self._output is not None and drain_timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._output.settled(), drain_timeout)
        self._closing = True
        for relay in (self._input, self._output):
            if relay is not None:
                await relay.close()
        self._input = self._output = None
        if self._socket is not None:
            self._socket.close()
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None
        if self._stdin_source is not None:
            self._stdin_source.close()
        self._stdout.close()
