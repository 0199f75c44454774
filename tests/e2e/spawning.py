"""Client side of ``spawner.py``: commands started under a child subreaper, handled by the test.

:class:`SpawnServer` starts ``subreaper.py -- spawner.py SOCKET`` (watching this process, so a
killed pytest does not leave the tree behind) and :meth:`SpawnServer.spawn` starts a command
there with the test's file descriptors as its stdio; :class:`Spawned` waits for it or signals
it (the server does both, so a signal never reaches a recycled PID).
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.containerd import SUBREAPER, kill_subreaper_tree

SPAWNER = Path(__file__).with_name("spawner.py")


class SpawnError(RuntimeError):
    pass


class Spawned:
    """A command started by the spawn server: its PID, its exit status once known."""

    def __init__(self, connection: socket.socket, argv: Sequence[str]) -> None:
        self._connection = connection
        self.argv = list(argv)
        reply = self._receive(timeout=30.0)
        if reply is None or "pid" not in reply:
            connection.close()
            raise SpawnError(f"cannot start {self.argv}: {reply}")
        self.pid = int(reply["pid"])
        self.returncode: int | None = None

    def _receive(self, timeout: float | None) -> dict[str, Any] | None:
        self._connection.settimeout(timeout)
        data = self._connection.recv(1 << 16)
        if not data:
            return None
        message: dict[str, Any] = json.loads(data)
        return message

    def poll(self) -> int | None:
        """The exit status if the command has exited (without waiting), else None."""
        if self.returncode is None:
            with contextlib.suppress(TimeoutError, BlockingIOError):
                self._wait_once(0.0)
        return self.returncode

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the exit status (negative: killed by that signal); TimeoutError after
        ``timeout`` seconds."""
        if self.returncode is None:
            self._wait_once(timeout)
        assert self.returncode is not None
        return self.returncode

    def _wait_once(self, timeout: float) -> None:
        try:
            reply = self._receive(timeout)
        except TimeoutError:
            message = f"{self.argv} (pid {self.pid}) still runs after {timeout} s"
            raise TimeoutError(message) from None
        if reply is None or "status" not in reply:
            raise SpawnError(f"spawn server went away while {self.argv} ran: {reply}")
        self.returncode = int(reply["status"])
        self._connection.close()

    def send_signal(self, signum: int) -> None:
        """Signal the command unless it has already been reaped."""
        if self.returncode is None:
            with contextlib.suppress(OSError):
                self._connection.send(json.dumps({"signal": int(signum)}).encode())

    def close(self) -> None:
        """SIGKILL the command if it still runs, wait for it, close the connection."""
        if self.returncode is None:
            self.send_signal(9)
            with contextlib.suppress(TimeoutError, SpawnError, OSError):
                self.wait(30.0)
        self._connection.close()


class SpawnServer:
    """``subreaper.py`` running ``spawner.py``: every command of :meth:`spawn` and its orphans
    live below the subreaper, which reaps them. :meth:`stop` kills the whole tree by PID."""

    def __init__(self, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._subreaper: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self._subreaper = subprocess.Popen(
                [sys.executable, str(SUBREAPER), "--parent", str(os.getpid()), "--",
                 sys.executable, str(SPAWNER), str(self.socket_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd="/",
            )
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self._subreaper.poll() is not None or time.monotonic() > deadline:
                raise SpawnError(f"spawn server did not start; see {self.log_path}")
            time.sleep(0.02)

    @property
    def subreaper_pid(self) -> int:
        if self._subreaper is None:
            raise SpawnError("spawn server not started")
        return self._subreaper.pid

    def status(self) -> str:
        """What a failure message needs: who runs below the subreaper, the server's log."""
        processes = [f"{process.pid} {process.status()} {' '.join(process.cmdline())[:200]}"
                     for process in self.descendants()]
        try:
            log = self.log_path.read_text(errors="replace")[-4000:]
        except OSError as error:
            log = repr(error)
        alive = self._subreaper is not None and self._subreaper.poll() is None
        return (f"subreaper alive: {alive}\nprocesses:\n" + "\n".join(processes)
                + f"\n--- {self.log_path} ---\n{log}")

    def descendants(self) -> list[psutil.Process]:
        """Every living process below the subreaper (the spawner included)."""
        try:
            return psutil.Process(self.subreaper_pid).children(recursive=True)
        except (psutil.NoSuchProcess, SpawnError):
            return []

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | str = "/",
        stdio: Sequence[int] = (),
        ctty: bool = False,
    ) -> Spawned:
        """Start ``argv`` with ``stdio`` (fds for 0, 1, 2; missing ones are /dev/null) and,
        with ``ctty``, its stdin as controlling terminal of a new session."""
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            connection.settimeout(30.0)
            try:
                connection.connect(str(self.socket_path))
            except OSError as error:
                message = f"cannot reach the spawn server: {error!r}\n{self.status()}"
                raise SpawnError(message) from error
            request = {"argv": list(argv), "env": dict(env), "cwd": str(cwd), "ctty": ctty}
            fds = array.array("i", list(stdio))
            connection.sendmsg(
                [json.dumps(request).encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)] if stdio else [],
            )
            return Spawned(connection, argv)
        except BaseException:
            connection.close()
            raise

    def stop(self, errors: list[str]) -> None:
        """SIGKILL, by PID, everything below the subreaper until the subreaper has exited."""
        subreaper = self._subreaper
        if subreaper is None:
            return
        kill_subreaper_tree(subreaper, errors, timeout=20.0)
        self.socket_path.unlink(missing_ok=True)
