"""`pyshim run` with a terminal (-t, or a bundle's process.terminal): the container's pty master
relayed to/from our fds 0 and 1, our own terminal in raw mode while the container runs, and its
size copied to the container's at start and on every SIGWINCH, as `runc run` does.

Owns the terminal settings it changes (always restored) and the SIGWINCH handler; the relays are
the engine's TerminalIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import termios
import tty
from typing import Any

from pyshim.io.fifo import InputSource, OutputTarget
from pyshim.io.terminal import TerminalIO

log = logging.getLogger("pyshim.run")


class TerminalSession:
    """Our side of the container's terminal. `io` goes to Container.create; `begin()` once it
    returned (runc has handed over the master), `end()` always."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str,
                 stdin: InputSource | None, raw_stdin: bool) -> None:
        self.loop = loop
        try:
            stdout: OutputTarget | None = OutputTarget(os.dup(1))
        except OSError:  # closed: the terminal's output is discarded
            stdout = None
        self.io = TerminalIO(stdin=stdin, stdout=stdout, name=name)
        # Where our window size comes from: the first of our fds that is a terminal.
        self._size_fd = next((fd for fd in (0, 1, 2) if os.isatty(fd)), None)
        self._raw_stdin = raw_stdin and os.isatty(0)
        self._saved_mode: list[Any] | None = None
        self._watching = False

    def begin(self) -> None:
        self.copy_size()
        if self._size_fd is not None:
            self.loop.add_signal_handler(signal.SIGWINCH, self.copy_size)
            self._watching = True
        if self._raw_stdin:
            try:
                self._saved_mode = termios.tcgetattr(0)
                # Keystrokes go to the container's line discipline, not ours (^C, ^D, ^Z
                # included): the container's terminal does the echoing and editing.
                tty.setraw(0, termios.TCSANOW)
            except termios.error as error:
                log.debug("cannot put stdin in raw mode: %s", error)

    def copy_size(self) -> None:
        if self._size_fd is None:
            return
        try:
            size = os.get_terminal_size(self._size_fd)
            self.io.resize(size.columns, size.lines)
        except OSError as error:  # our terminal went away, or the master is not there yet
            log.debug("terminal resize: %s", error)

    def end(self) -> None:
        """Our terminal as it was (before any error is printed on it)."""
        if self._watching:
            self.loop.remove_signal_handler(signal.SIGWINCH)
            self._watching = False
        if self._saved_mode is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved_mode)
            self._saved_mode = None
