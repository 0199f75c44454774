"""The conmon monitor's stdio as an engine ProcessIO (spec §4.1 step 8, §5.2, §5.3, §7).

Without a terminal: a stdout pipe, a stderr pipe (always: it also carries the runtime's own
error text) and, with `-i`, a stdin pipe whose write end the attach clients feed. With `-t`: a
console socket the runtime sends the pty master to (ONLCR set on it, as conmon does), plus the
stderr pipe. Every output is pumped to one Fanout (log drivers and attach clients at once).
Owns those fds and pumps, never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios

from pyshim.conmon.ctl import WindowSizer
from pyshim.io.base import ProcessIO
from pyshim.io.console import ConsoleSocket
from pyshim.io.fanin import StdinWriter
from pyshim.io.fanout import Fanout, OutputPump
from pyshim.io.stdio_pipes import StdioPipes
from pyshim.runtime import Stdio

#: conmon waits for the runtime to connect to its console socket as long as the runtime runs;
#: ours is bounded (the runtime has its own time limit, this only has to outlast it).
CONSOLE_TIMEOUT = 120.0


class MonitorIO(ProcessIO):
    """conmon's pipes or console for one process, pumped into `fanout`."""

    def __init__(self, fanout: Fanout, *, stdin: StdinWriter | None, terminal: bool,
                 sizer: WindowSizer, passthrough: bool = False) -> None:
        self.fanout = fanout
        #: `-l passthrough` (spec §8.4): the runtime and the container get our own 0-2 (the
        #: caller's); no pipes, nothing to pump.
        self.passthrough = passthrough
        self.stdin = stdin
        self.terminal = terminal
        self.sizer = sizer
        self.master: int | None = None
        self._pumps: list[OutputPump] = []
        self._console: ConsoleSocket | None = None
        piped = not passthrough and not terminal
        self._pipes = StdioPipes(stdin=piped and stdin is not None, stdout=piped,
                                 stderr=not passthrough)
        if terminal and not passthrough:
            try:
                self._console = ConsoleSocket()
            except BaseException:
                self._pipes.close()
                raise

    def runtime_stdio(self) -> Stdio:
        if self.passthrough:
            return Stdio(0, 1, 2)
        return self._pipes.runtime_stdio()

    @property
    def console_socket(self) -> str | None:
        return self._console.path if self._console is not None else None

    async def start(self) -> None:
        self._pipes.close_theirs()
        if self.passthrough:
            return
        if self._console is not None:
            try:
                master = await self._console.receive_master(CONSOLE_TIMEOUT)
            finally:
                self._console.close()
                self._console = None
            _set_onlcr(master)
            self.master = master
            self.sizer.set_master(master)
            if self.stdin is not None:
                self.stdin.set_target(os.dup(master))
            self._pump(os.dup(master), "stdout")
        else:
            if self.stdin is not None:
                self.stdin.set_target(self._pipes.take("stdin"))
            self._pump(self._pipes.take("stdout"), "stdout")
        self._pump(self._pipes.take("stderr"), "stderr")

    def _pump(self, fd: int, stream: str) -> None:
        pump = OutputPump(fd, stream, self.fanout, name=stream)
        self._pumps.append(pump)
        pump.start()

    def unread_stderr(self, limit: int = 8191) -> bytes:
        # The runtime has exited: its write end (and the container's) are ours only now.
        self._pipes.close_theirs("stderr")
        return self._pipes.unread_stderr(limit)

    async def wait_output(self) -> None:
        await asyncio.gather(*(pump.drained() for pump in self._pumps))

    def output_drained(self) -> bool:
        return all(pump.is_drained() for pump in self._pumps)

    async def wait_eof(self) -> None:
        """Until every output reached EOF (exec without a terminal: conmon reads on)."""
        await asyncio.gather(*(pump.wait() for pump in self._pumps))

    def close_stdin(self) -> None:
        if self.stdin is not None:
            self.stdin.close()

    async def close(self, drain_timeout: float = 0.0) -> None:
        for pump in self._pumps:
            await pump.close()
        self._pumps.clear()
        if self._console is not None:
            self._console.close()
            self._console = None
        self.sizer.clear_master()
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = None
        self._pipes.close()


def _set_onlcr(master: int) -> None:
    """conmon sets ONLCR on the master: the container's \\n reaches clients as \\r\\n."""
    with contextlib.suppress(termios.error):
        attributes = termios.tcgetattr(master)
        attributes[1] |= termios.ONLCR
        termios.tcsetattr(master, termios.TCSANOW, attributes)
