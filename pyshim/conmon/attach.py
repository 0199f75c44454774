"""conmon's attach socket (spec §9): a SEQPACKET unix socket in the bundle that podman and CRI-O
connect to; output goes out as `<stream byte><chunk>` packets, client bytes go to the stdin.

Owns the listening socket, the symlink of the non-full-attach mode and the clients. Never
touches the container's output fds.

Back-pressure: conmon writes to clients with blocking writes, so one slow client slows the
whole monitor (logging too) for as long as it likes. Here each client has a queue; a client more
than `client_backlog` bytes behind holds the pump (like conmon, so a slow terminal still gets
every byte) but only while it makes progress: one that takes nothing for `stall_timeout`
seconds is cut off (write direction shut down, as conmon does after a failed send) and the
pump, with the log, goes on. So the log is never held longer than that by a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable

from pyshim.io.fanin import StdinWriter
from pyshim.io.fanout import CONMON_CHUNK, OutputSink
from pyshim.io.relay import wait_fd

log = logging.getLogger("pyshim.conmon")

STREAM_PREFIX = {"stdin": b"\x01", "stdout": b"\x02", "stderr": b"\x03"}
#: One recv from a client (spec §9.3).
INPUT_CHUNK = 32768
#: Output queued for a client before it holds the pump.
CLIENT_BACKLOG = 1 << 20
#: A client over its backlog that takes nothing for this long is cut off.
STALL_TIMEOUT = 5.0
BACKLOG = 10
# sockaddr_un's sun_path holds 108 bytes with the NUL.
_SUN_PATH_MAX = 107


class AttachError(Exception):
    """The attach socket cannot be set up; str() is the diagnostic line."""


def attach_link(socket_dir: str, cuuid: str) -> str:
    """`<socket-dir>/<cuuid>`, one character shorter when it would be exactly 107 bytes long
    (conmon's rule for sockaddr_un, spec §9.1)."""
    link = os.path.join(socket_dir, cuuid)
    if len(os.fsencode(link)) == _SUN_PATH_MAX:
        link = link[:-1]
    return link


class AttachServer(OutputSink):
    """The listening socket and its clients.

    `stdin`: where client input goes (None: no -i and no -t, input is never read).
    `close_stdin_on_detach`: -i without --leave-stdin-open: the first client to disconnect
    closes the container's stdin, even if others are still attached (spec §9.4).
    """

    name = "attach"

    def __init__(self, path: str, *, stdin: StdinWriter | None = None,
                 close_stdin_on_detach: bool = False,
                 client_backlog: int = CLIENT_BACKLOG,
                 stall_timeout: float = STALL_TIMEOUT) -> None:
        self.path = path  # the path clients use (through the symlink, if there is one)
        self.stdin = stdin
        self.close_stdin_on_detach = close_stdin_on_detach
        self.client_backlog = client_backlog
        self.stall_timeout = stall_timeout
        self.clients: list[AttachClient] = []
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------- set-up

    @classmethod
    def create(
        cls,
        *,
        bundle: str,
        cuuid: str,
        full_attach: bool,
        socket_dir: str = "/var/run/crio",
        stdin: StdinWriter | None = None,
        close_stdin_on_detach: bool = False,
    ) -> AttachServer:
        """Bind `<bundle>/attach` (full attach) or, through a symlink `<socket-dir>/<cuuid>` to
        the bundle, `<socket-dir>/<cuuid>/attach`. Paths longer than sun_path work: the bind
        goes through /proc/self/fd of an O_PATH handle of the directory. Raises AttachError."""
        if full_attach:
            directory = bundle
        else:
            directory = attach_link(socket_dir, cuuid)
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory)
                os.symlink(bundle, directory)
            except OSError as error:
                raise AttachError(
                    f"[conmon:e]: Failed to create symlink for notify socket {error.strerror}"
                ) from error
        server = cls(os.path.join(directory, "attach"), stdin=stdin,
                     close_stdin_on_detach=close_stdin_on_detach)
        server._bind(directory)
        return server

    def _bind(self, directory: str) -> None:
        listener = socket.socket(socket.AF_UNIX,
                                 socket.SOCK_SEQPACKET | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            handle = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                via = f"/proc/self/fd/{handle}/attach"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(via)
                os.fchmod(listener.fileno(), 0o700)
                listener.bind(via)
                os.chmod(via, 0o700)
            finally:
                os.close(handle)
            listener.listen(BACKLOG)
        except OSError as error:
            listener.close()
            raise AttachError(
                f"[conmon:e]: Failed to create attach socket {self.path}: {error.strerror}"
            ) from error
        self._listener = listener

    def start(self) -> None:
        """Accept clients on the running loop."""
        assert self._listener is not None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("[conmon:w]: accepting an attach client: %s", error)
                return
            connection.setblocking(False)
            client = AttachClient(self, connection)
            self.clients.append(client)
            client.start()

    # ------------------------------------------------------------------------- output

    def write(self, stream: str, data: bytes) -> None:
        if not self.clients:
            return  # nobody attached: output is only logged, never kept for later
        prefix = STREAM_PREFIX[stream]
        for start in range(0, len(data), CONMON_CHUNK):
            packet = prefix + data[start : start + CONMON_CHUNK]
            for client in list(self.clients):
                client.send(packet)

    def blocked(self) -> Awaitable[None] | None:
        behind = [client for client in self.clients if client.queued > self.client_backlog]
        return self._catch_up(behind) if behind else None

    async def _catch_up(self, clients: list[AttachClient]) -> None:
        await asyncio.gather(*(client.catch_up(self.client_backlog // 2, self.stall_timeout)
                               for client in clients))

    # ---------------------------------------------------------------------- shutting down

    def _client_input_ended(self, client: AttachClient) -> None:
        if self.stdin is not None and self.close_stdin_on_detach:
            self.stdin.close()

    def _forget(self, client: AttachClient) -> None:
        with contextlib.suppress(ValueError):
            self.clients.remove(client)

    async def close(self, flush_timeout: float = 5.0) -> None:
        """At the container's exit, after its output was pumped: give each client up to
        flush_timeout to take what is queued for it, then close every client (they see EOF)
        and the listening socket. The socket file stays until unlink()."""
        self._stop_listening()
        pending = [client.flushed() for client in self.clients if client.queued]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*pending), flush_timeout)
        for client in list(self.clients):
            client.close()

    def _stop_listening(self) -> None:
        if self._listener is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def unlink(self) -> None:
        """Remove the socket file (through the symlink path when there is one; the symlink
        and the bundle stay)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class AttachClient:
    """One connection: a queue of packets for it, and its input to the container's stdin."""

    def __init__(self, server: AttachServer, connection: socket.socket) -> None:
        self.server = server
        self.connection = connection
        self.fd = connection.fileno()
        self._queue: list[bytes] = []
        self.queued = 0
        self._sending = True
        self._writer_armed = False
        self._reading = False
        self._input_task: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._progress = asyncio.Event()  # set whenever queued output went out (or never will)
        self.sent = 0
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self.server.stdin is not None and not self.server.stdin.closed:
            self._input_task = self._loop.create_task(self._read_input(),
                                                      name=f"attach client {self.fd}")

    # ------------------------------------------------------------------------- output

    def send(self, packet: bytes) -> None:
        if not self._sending:
            return
        if self._queue:
            self._enqueue(packet)
            return
        try:
            self.connection.send(packet)
        except (BlockingIOError, InterruptedError):
            self._enqueue(packet)
        except OSError as error:
            self._stop_sending(error)

    def _enqueue(self, packet: bytes) -> None:
        self._queue.append(packet)
        self.queued += len(packet)
        self._flushed.clear()
        if not self._writer_armed:
            self._loop.add_writer(self.fd, self._send_queued)
            self._writer_armed = True

    def _send_queued(self) -> None:
        while self._queue:
            packet = self._queue[0]
            try:
                self.connection.send(packet)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._stop_sending(error)
                return
            self._queue.pop(0)
            self.queued -= len(packet)
            self.sent += len(packet)
            self._progress.set()
        self._disarm_writer()
        self._flushed.set()

    async def catch_up(self, low_water: int, stall_timeout: float) -> None:
        """Until at most low_water bytes are queued; a client that takes nothing for
        stall_timeout seconds meanwhile is cut off instead."""
        while self._sending and self.queued > low_water:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), stall_timeout)
            except TimeoutError:
                log.warning("[conmon:w]: attach client %d took no output for %.0f s; "
                            "cutting it off", self.fd, stall_timeout)
                self._stop_sending(None)

    def _disarm_writer(self) -> None:
        if self._writer_armed:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
            self._writer_armed = False

    def _stop_sending(self, error: OSError | None) -> None:
        """A failed send shuts down the client's write direction (spec §9.2)."""
        if error is not None and error.errno not in (errno.EPIPE, errno.ECONNRESET):
            log.warning("[conmon:w]: sending to attach client %d: %s", self.fd, error)
        self._sending = False
        self._queue.clear()
        self.queued = 0
        self._disarm_writer()
        self._flushed.set()
        self._progress.set()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
        if self._input_task is None or self._input_task.done():
            self.close()

    async def flushed(self) -> None:
        await self._flushed.wait()

    # -------------------------------------------------------------------------- input

    async def _read_input(self) -> None:
        stdin = self.server.stdin
        assert stdin is not None
        try:
            while not stdin.closed:
                try:
                    data = self.connection.recv(INPUT_CHUNK)
                except (BlockingIOError, InterruptedError):
                    await wait_fd(self._loop, self.fd, write=False)
                    continue
                except OSError:
                    data = b""
                if not data:
                    break  # EOF: the client shut down its side or went away
                stdin.write(data)
                # While its bytes wait for the container, this client is not read.
                await stdin.wait_flushed()
            else:
                return  # stdin closed by someone else: this client's input has nowhere to go
            self.server._client_input_ended(self)
        except asyncio.CancelledError:
            pass
        finally:
            if not self._sending:
                self.close()

    def close(self) -> None:
        if self.fd < 0:
            return
        self._disarm_writer()
        task = self._input_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self.server._forget(self)
        self.connection.close()
        self.fd = -1
        self._sending = False
        self._flushed.set()
        self._progress.set()
