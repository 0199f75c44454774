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
        self._ours: dict[str, int] = {}
        self._theirs: dict[str, int] = {}
        self._console: ConsoleSocket | None = None
        if passthrough:
            return
        try:
            if terminal:
                self._console = ConsoleSocket()
            else:
                if stdin is not None:
                    read, write = os.pipe2(os.O_CLOEXEC)
                    self._theirs["stdin"], self._ours["stdin"] = read, write
                read, write = os.pipe2(os.O_CLOEXEC)
                self._ours["stdout"], self._theirs["stdout"] = read, write
            read, write = os.pipe2(os.O_CLOEXEC)
            self._ours["stderr"], self._theirs["stderr"] = read, write
        except BaseException:
            self._close_fds()
            raise

    def runtime_stdio(self) -> Stdio:
        if self.passthrough:
            return Stdio(0, 1, 2)
        return Stdio(self._theirs.get("stdin"), self._theirs.get("stdout"),
                     self._theirs.get("stderr"))

    @property
    def console_socket(self) -> str | None:
        return self._console.path if self._console is not None else None

    async def start(self) -> None:
        for fd in self._theirs.values():
            os.close(fd)
        self._theirs.clear()
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
                self.stdin.set_target(self._ours.pop("stdin"))
            self._pump(self._ours.pop("stdout"), "stdout")
        self._pump(self._ours.pop("stderr"), "stderr")

    def _pump(self, fd: int, stream: str) -> None:
        pump = OutputPump(fd, stream, self.fanout, name=stream)
        self._pumps.append(pump)
        pump.start()

    def unread_stderr(self, limit: int = 8191) -> bytes:
        fd = self._ours.get("stderr")
        if fd is None:
            return b""
        # The runtime has exited: its write end (and the container's) are ours only now.
        with contextlib.suppress(KeyError, OSError):
            os.close(self._theirs.pop("stderr"))
        try:
            os.set_blocking(fd, False)
            return os.read(fd, limit)
        except OSError:
            return b""

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
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (*self._ours.values(), *self._theirs.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ours.clear()
        self._theirs.clear()


def _set_onlcr(master: int) -> None:
    """conmon sets ONLCR on the master: the container's \\n reaches clients as \\r\\n."""
    with contextlib.suppress(termios.error):
        attributes = termios.tcgetattr(master)
        attributes[1] |= termios.ONLCR
        termios.tcsetattr(master, termios.TCSANOW, attributes)
