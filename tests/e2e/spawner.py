"""Start commands on behalf of a test, as children of a process below a child subreaper.

Usage::

    python tests/e2e/subreaper.py --parent PID -- python tests/e2e/spawner.py SOCKET

Why: podman's monitor (conmon, or pyshim's) double-forks and its daemon is re-parented to the
nearest child subreaper; PID 1 on the test machines never reaps it. The test (pytest) must not
be a subreaper itself (its own ``waitpid`` calls would race with the orphan reaping), so the
podman commands are started by this server, which runs under ``subreaper.py``: the orphans of
every command it starts (monitors, containers, exit commands) are reaped by that subreaper.

Protocol, on a ``SOCK_SEQPACKET`` Unix socket bound at SOCKET, one connection per command:

* client → server, first message: JSON ``{"argv": [...], "env": {...}, "cwd": "...",
  "ctty": bool}`` with up to three file descriptors (stdin, stdout, stderr; missing ones are
  /dev/null) in ``SCM_RIGHTS``. With ``ctty`` the command gets a new session whose controlling
  terminal is its stdin (which must be a terminal).
* server → client: ``{"pid": N}`` once the command runs, or ``{"error": "..."}`` (then closed).
* client → server, later: ``{"signal": N}`` sends signal N to the command if it has not been
  reaped yet (so never to a recycled PID).
* server → client: ``{"status": S}`` when the command has exited (``os.waitstatus_to_exitcode``:
  negative for a signal), then the connection is closed. A client that goes away early does
  not affect the command.

Standard library only, so the file runs as a plain script.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import termios

_MAX_MESSAGE = 1 << 20
_DEFAULT_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM,
                     signal.SIGINT, signal.SIGHUP)


def receive(connection: socket.socket) -> tuple[dict[str, object] | None, list[int]]:
    """One message and the descriptors sent with it; (None, []) at end of stream."""
    fds = array.array("i")
    data, ancillary, _flags, _address = connection.recvmsg(
        _MAX_MESSAGE, socket.CMSG_SPACE(3 * fds.itemsize)
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message: dict[str, object] = json.loads(data)
    return message, list(fds)


def _send(connection: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        connection.send(json.dumps(message).encode())


def _exec_child(request: dict[str, object], stdio: list[int], report: int) -> None:
    """In the forked child: set up stdio (and the terminal), exec; never returns."""
    try:
        for signum in _DEFAULT_IN_CHILD:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if request.get("ctty"):
            os.setsid()
            fcntl.ioctl(stdio[0], termios.TIOCSCTTY, 0)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target, inheritable=True)
        os.closerange(3, report)
        os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir(str(request.get("cwd") or "/"))
        argv = [str(word) for word in request["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in request["env"].items()}  # type: ignore[attr-defined]
        os.execvpe(argv[0], argv, env)
    except BaseException as error:  # reported to the client, then exit
        with contextlib.suppress(OSError):
            os.write(report, f"{type(error).__name__}: {error}".encode())
    os._exit(127)


class Server:
    """The accept/spawn/reap loop (single-threaded; SIGCHLD arrives through a wakeup fd)."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Listen before the socket appears under its name: the client waits for the name.
        self.listener.bind(path + ".new")
        self.listener.listen(64)
        os.rename(path + ".new", path)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.wakeup_read, self.wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_write)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, "sigchld")
        #: Running commands: pid -> its client's connection (None once the client left).
        self.commands: dict[int, socket.socket | None] = {}
        self.pid_of: dict[socket.socket, int] = {}
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def serve(self) -> None:
        while not self.stopping:
            for key, _events in self.selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "sigchld":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wakeup_read, 4096)
                    self._reap()
                else:
                    self._from_client(key.fileobj)  # type: ignore[arg-type]
        for pid in list(self.commands):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _accept(self) -> None:
        connection, _ = self.listener.accept()
        try:
            request, fds = receive(connection)
        except (OSError, ValueError):
            connection.close()
            return
        if request is None:
            connection.close()
            return
        try:
            pid = self._spawn(request, fds)
        except OSError as error:
            _send(connection, {"error": str(error)})
            connection.close()
            return
        finally:
            for fd in fds:
                os.close(fd)
        self.commands[pid] = connection
        self.pid_of[connection] = pid
        self.selector.register(connection, selectors.EVENT_READ, "client")
        _send(connection, {"pid": pid})

    def _spawn(self, request: dict[str, object], fds: list[int]) -> int:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        stdio = [fds[index] if index < len(fds) else null for index in range(3)]
        report_read, report_write = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            _exec_child(request, stdio, report_write)
        os.close(null)
        os.close(report_write)
        with os.fdopen(report_read, "rb") as report:
            failure = report.read()
        if failure:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise OSError(failure.decode(errors="replace"))
        return pid

    def _from_client(self, connection: socket.socket) -> None:
        try:
            message, fds = receive(connection)
        except (OSError, ValueError):
            message, fds = None, []
        for fd in fds:
            os.close(fd)
        pid = self.pid_of.get(connection)
        if message is None:
            self._forget(connection)
            if pid is not None:
                self.commands[pid] = None
            return
        signum = message.get("signal")
        if pid is not None and isinstance(signum, int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)  # not reaped yet, so still our child

    def _forget(self, connection: socket.socket) -> None:
        self.selector.unregister(connection)
        self.pid_of.pop(connection, None)
        connection.close()

    def _reap(self) -> None:
        while self.commands:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.commands.pop(pid, None)
            if connection is not None:
                _send(connection, {"status": os.waitstatus_to_exitcode(status)})
                self._forget(connection)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: spawner.py SOCKET\n")
        return 2
    Server(argv[0]).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
