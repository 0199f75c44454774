"""conmon's `ctl` and `winsz` FIFOs in the bundle (spec §10): terminal resizes and log reopens.

The parsing is sans-IO (`LineBuffer`, `parse_ctl_line`, `parse_winsz_line`); `ControlFifos`
creates the FIFOs, reads them on the event loop and calls the monitor back. It never resizes a
terminal or reopens a log itself, and never blocks: each FIFO keeps a writer of our own, so a
writer closing never shows as EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from pyshim.io.console import resize

log = logging.getLogger("pyshim.conmon")

RESIZE = 1
REOPEN_LOGS = 2
#: conmon's control buffer: a line must fit in 199 bytes.
LINE_MAX = 199
_READ_CHUNK = 4096
# sscanf("%d %d %d"): whitespace before each number, digits taken greedily (no backtracking),
# anything may follow the last number.
_INT = r"\s*([+-]?\d++)"
_CTL = re.compile(_INT * 3)
_WINSZ = re.compile(_INT * 2)
_WINSIZE_MAX = 0xFFFF  # struct winsize's fields are unsigned short


@dataclass(frozen=True, slots=True)
class CtlMessage:
    kind: int
    height: int
    width: int


class LineBuffer:
    """Bytes in, complete lines out (without the \\n); an incomplete line waits for the rest.
    A line longer than LINE_MAX is dropped with a warning, as it can never be a message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pending = bytearray()
        self._overlong = False

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        *lines, rest = self._pending.split(b"\n")
        if self._overlong and lines:
            lines.pop(0)  # the tail of a line already dropped
            self._overlong = False
        self._pending[:] = rest
        if len(self._pending) > LINE_MAX:
            log.warning("[conmon:w]: %s: no newline in %d bytes; dropping them", self.name,
                        len(self._pending))
            self._pending.clear()
            self._overlong = True
        return [bytes(line) for line in lines]


def _numbers(pattern: re.Pattern[str], line: bytes) -> list[int] | None:
    match = pattern.match(line.decode("ascii", "replace"))
    if match is None:
        return None
    try:
        return [int(group) for group in match.groups()]
    except ValueError:
        return None


def parse_ctl_line(line: bytes) -> CtlMessage | None:
    """`<type> <height> <width>`; None (after a warning) if it is not a message we act on."""
    numbers = _numbers(_CTL, line)
    if numbers is None:
        log.warning("[conmon:w]: Invalid control message format: %r", line)
        return None
    kind, height, width = numbers
    if kind not in (RESIZE, REOPEN_LOGS):
        log.warning("[conmon:w]: Invalid control message type: %d", kind)
        return None
    if kind == RESIZE and not _valid_size(height, width):
        return None
    return CtlMessage(kind, height, width)


def parse_winsz_line(line: bytes) -> tuple[int, int] | None:
    """`<height> <width>`; None (after a warning) if unusable."""
    numbers = _numbers(_WINSZ, line)
    if numbers is None:
        log.warning("[conmon:w]: Failed to parse window size: %r", line)
        return None
    height, width = numbers
    return (height, width) if _valid_size(height, width) else None


def _valid_size(height: int, width: int) -> bool:
    if 0 <= height <= _WINSIZE_MAX and 0 <= width <= _WINSIZE_MAX:
        return True
    log.warning("[conmon:w]: Invalid window size: %dx%d", height, width)
    return False


# --------------------------------------------------------------------------------- FIFOs


def make_fifo(path: str) -> tuple[int, int]:
    """mkfifo 0660 (an existing entry is replaced) and open it: (read end, our writer)."""
    try:
        os.mkfifo(path, 0o660)
    except FileExistsError:
        os.unlink(path)
        os.mkfifo(path, 0o660)
    read = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        write = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # a reader exists: never blocks
    except BaseException:
        os.close(read)
        raise
    return read, write


class ControlFifos:
    """`<directory>/ctl` and `<directory>/winsz`, read on the loop.

    ctl `1 h w` and winsz `h w` call on_resize(height, width); ctl `2 0 0` calls on_reopen().
    Each line is handled on its own (conmon 2.1.6 mishandled several lines in one read). The
    FIFOs are left in place by close(): podman removes them during cleanup.
    """

    def __init__(self, directory: str, *, on_resize: Callable[[int, int], None],
                 on_reopen: Callable[[], None]) -> None:
        self.ctl_path = os.path.join(directory, "ctl")
        self.winsz_path = os.path.join(directory, "winsz")
        self._on_resize = on_resize
        self._on_reopen = on_reopen
        self._fds: list[int] = []
        self._readers: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            self._ctl = make_fifo(self.ctl_path)
            self._fds += self._ctl
            self._winsz = make_fifo(self.winsz_path)
            self._fds += self._winsz
        except BaseException:
            self.close()
            raise
        self._ctl_lines = LineBuffer("ctl")
        self._winsz_lines = LineBuffer("winsz")

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for fd, handler in ((self._ctl[0], self._read_ctl), (self._winsz[0], self._read_winsz)):
            self._loop.add_reader(fd, handler)
            self._readers.append(fd)

    def _read_ctl(self) -> None:
        for line in self._ctl_lines.feed(self._read(self._ctl[0])):
            message = parse_ctl_line(line)
            if message is None:
                continue
            if message.kind == RESIZE:
                self._resize(message.height, message.width)
            else:
                self._call(self._on_reopen)

    def _read_winsz(self) -> None:
        for line in self._winsz_lines.feed(self._read(self._winsz[0])):
            size = parse_winsz_line(line)
            if size is not None:
                self._resize(*size)

    def _resize(self, height: int, width: int) -> None:
        self._call(self._on_resize, height, width)

    def _call(self, callback: Callable[..., None], *args: int) -> None:
        try:
            callback(*args)
        except Exception as error:
            log.warning("[conmon:w]: control message failed: %s", error)

    @staticmethod
    def _read(fd: int) -> bytes:
        try:
            return os.read(fd, _READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return b""

    def close(self) -> None:
        if self._loop is not None:
            for fd in self._readers:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
        self._readers.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class WindowSizer:
    """The terminal's size as the FIFOs ask for it: applied to the pty master once there is
    one (a resize sent before runc connected the console is applied then, spec §10)."""

    def __init__(self) -> None:
        self._master = -1
        self.size: tuple[int, int] | None = None  # (height, width) last asked for

    def set_master(self, master: int) -> None:
        """The pty master (not owned: the caller closes it, after clear_master())."""
        self._master = master
        if self.size is not None:
            self._apply()

    def clear_master(self) -> None:
        self._master = -1

    def resize(self, height: int, width: int) -> None:
        self.size = (height, width)
        if self._master >= 0:
            self._apply()

    def _apply(self) -> None:
        assert self.size is not None
        height, width = self.size
        try:
            resize(self._master, width, height)
        except OSError as error:
            log.warning("[conmon:w]: Failed to set process pty terminal size: %s", error)
