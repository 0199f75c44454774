"""Opening the client's FIFOs (containerd's `ctr`, CRI) without ever blocking.

Output FIFOs are opened through a reader of our own (so opening never blocks or fails while
the client has not opened its end yet), which is dropped at once: a client going away then
shows as EPIPE, and the relay spools until a reader returns (relay.py, spool.py). The stdin
FIFO gets a keep-open write end (so the container's stdin survives a client detaching;
CloseIO closes it).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

from pyshim.io.spool import Spool


@dataclass(slots=True)
class OutputTarget:
    """Where one output stream goes: the fd we write, plus fds held only to keep it usable,
    and for a client's FIFO the spool that holds output while it has no reader."""

    fd: int
    keepalive: int | None = None
    spool: Spool | None = None

    def close(self) -> None:
        # Idempotent: a second close must never hit an fd number reused since the first.
        for fd in (self.fd, self.keepalive):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd, self.keepalive = -1, None


@dataclass(slots=True)
class InputSource:
    """The stdin FIFO: the fd we read, and our keep-open writer (closed by CloseIO)."""

    fd: int
    keepalive: int | None = None

    def close_keepalive(self) -> None:
        if self.keepalive is not None:
            with contextlib.suppress(OSError):
                os.close(self.keepalive)
            self.keepalive = None

    def close(self) -> None:
        self.close_keepalive()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1


def open_output(path: str, spool: Spool | None = None) -> OutputTarget:
    """A FIFO gets a reader of our own first, so opening it for writing cannot block or fail
    while the client has not opened its end yet; that reader is closed again at once (see
    the module's docstring) and `spool` kept for the relay. Any other existing file is
    appended to (no create: a missing path is the caller's error)."""
    if stat.S_ISFIFO(os.stat(path).st_mode):
        opener = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(opener)
        return OutputTarget(fd, None, spool)
    return OutputTarget(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC))


def open_input(path: str) -> InputSource:
    """Read end first (never blocks), then our writer (succeeds because a reader exists)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        keepalive = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(fd)
        raise
    return InputSource(fd, keepalive)
