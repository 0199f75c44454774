"""runc's console socket and the pty master it hands us (spec §6.5).

Owns the listening socket in a private directory, receiving exactly one master fd over
SCM_RIGHTS, and the master's window size. Never reads or writes terminal data: relays do.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import termios

from pyshim.io.base import StdioError, StdioTimeout

#: How long after runc returned we wait for its connection (it has normally arrived already).
RECEIVE_TIMEOUT = 10.0


_PREFIX = "pyshim-pty-"


def remove_dead_shims_directories(base: str) -> None:
    """Console socket directories of shims that died between prepare() and start()."""
    try:
        names = [name for name in os.listdir(base) if name.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        owner = name[len(_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        directory = os.path.join(base, name)
        with contextlib.suppress(OSError):
            for entry in os.listdir(directory):
                os.unlink(os.path.join(directory, entry))
            os.rmdir(directory)


class ConsoleSocket:
    """A listening unix socket runc connects to with `--console-socket`."""

    def __init__(self) -> None:
        # runc runs as root like us; a 0700 directory keeps other users off the socket. Its
        # name carries our pid, so that the next shim removes what a dead one left.
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        remove_dead_shims_directories(base)
        self._directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base)
        self.path = os.path.join(self._directory, "pty.sock")
        self._listener: socket.socket | None = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
        )
        try:
            self._listener.bind(self.path)
            self._listener.listen(1)
            self._listener.setblocking(False)
        except BaseException:
            self.close()
            raise

    async def receive_master(self, timeout: float = RECEIVE_TIMEOUT) -> int:
        """The pty master runc sent, close-on-exec."""
        if self._listener is None:
            raise StdioError("console socket already closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                connection, _ = await loop.sock_accept(self._listener)
                with connection:
                    master = await _receive_fd(loop, connection)
        except TimeoutError:
            raise StdioTimeout(
                f"runc sent no terminal on {self.path} within {timeout:g} s"
            ) from None
        os.set_inheritable(master, False)
        return master

    def close(self) -> None:
        """Idempotent; removes the socket and its directory."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        shutil.rmtree(self._directory, ignore_errors=True)


async def _receive_fd(loop: asyncio.AbstractEventLoop, connection: socket.socket) -> int:
    connection.setblocking(False)
    while True:
        try:
            # The data is the pty's name; the one fd rides in SCM_RIGHTS.
            _, fds, _, _ = socket.recv_fds(connection, 4096, 1)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(connection.fileno(), readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(connection.fileno())
            continue
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise StdioError(f"runc sent {len(fds)} file descriptors on the console socket, not 1")
        return fds[0]


def resize(master: int, width: int, height: int) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def end_of_file_character(master: int) -> bytes:
    """The terminal's VEOF character (usually ^D), or ^D if the settings cannot be read."""
    with contextlib.suppress(termios.error):
        character = termios.tcgetattr(master)[6][termios.VEOF]
        if isinstance(character, bytes) and character:
            return character
    return b"\x04"

