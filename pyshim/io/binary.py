"""`binary://` stdio: a logging binary of the user's reads the container's output (spec §6.4).

Owns the logger process (started before runc with fds 3, 4, 5, in a session of its own; ready
when it closes fd 5; SIGTERM then SIGKILL at delete, the SIGKILL to its whole process group)
and the pipes it reads. The bytes never pass through us,
except a terminal's, which we relay into the logger's stdout pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from urllib.parse import parse_qsl, unquote, urlsplit

from pyshim.io.base import ProcessIO, StdioError, StdioTimeout, UnsupportedStdio
from pyshim.io.fifo import OutputTarget
from pyshim.io.terminal import TerminalIO
from pyshim.reaper import Exit, Reaper
from pyshim.runtime import Stdio

log = logging.getLogger("pyshim.io")

#: runc-v2 waits forever for a logger that never closes fd 5; we refuse the create instead.
READY_TIMEOUT = 10.0
#: At delete: after SIGTERM, how long the logger may take to flush and exit (as runc-v2).
STOP_TIMEOUT = 12.0


def logger_command(uri: str) -> list[str]:
    """`binary:///path?k=v&k2=v2` → [path, k, v, k2, v2] (first value of each key)."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if not os.path.isabs(path) or parts.netloc:
        raise UnsupportedStdio(f"binary:// stdio needs an absolute path, got {uri!r}")
    argv = [path]
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in seen:
            seen.add(key)
            argv += [key, value]
    return argv


class BinaryLoggerIO(ProcessIO):
    def __init__(
        self,
        uri: str,
        *,
        process_id: str,
        namespace: str,
        reaper: Reaper,
        cwd: str | None = None,
        terminal: bool = False,
        ready_timeout: float = READY_TIMEOUT,
        uid: int = -1,
        gid: int = -1,
        name: str = "process",
    ) -> None:
        self._argv = logger_command(uri)
        self._environment = {"CONTAINER_ID": process_id, "CONTAINER_NAMESPACE": namespace}
        self._reaper = reaper
        self._cwd = cwd
        self._ready_timeout = ready_timeout
        self._name = name
        self._logger_pid: int | None = None
        self._logger_exit: asyncio.Future[Exit] | None = None
        # (read end → the logger's fd 3 or 4, write end → the container or our terminal relay)
        self._pipes: dict[str, list[int]] = {}
        try:
            for stream in ("stdout", "stderr"):
                read, write = os.pipe2(os.O_CLOEXEC)
                self._pipes[stream] = [read, write]
                if uid != -1 or gid != -1:
                    os.fchown(write, uid, gid)
        except BaseException:
            self._close_pipes()
            raise
        self._terminal: TerminalIO | None = None
        if terminal:
            stdout_write = self._take("stdout", 1)
            self._terminal = TerminalIO(stdout=OutputTarget(stdout_write), name=name)

    @property
    def logger_pid(self) -> int | None:
        return self._logger_pid

    async def prepare(self) -> None:
        ready_read, ready_write = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                pid, exited = self._reaper.spawn(
                    self._argv, env=self._environment, cwd=self._cwd,
                    fd_map={3: self._pipes["stdout"][0], 4: self._pipes["stderr"][0],
                            5: ready_write},
                    # Its own session and group: a logger killed for never getting ready
                    # takes its children along (killpg), not only itself.
                    new_session=True,
                )
            except OSError as error:
                raise UnsupportedStdio(
                    f"cannot start logging binary {self._argv[0]}: {error.strerror or error}"
                ) from error
            self._logger_pid, self._logger_exit = pid, exited
            # The logger holds its copies now; ours would hide its EOF and ready signal.
            os.close(ready_write)
            ready_write = -1
            for stream in ("stdout", "stderr"):
                os.close(self._take(stream, 0))
            await self._wait_ready(ready_read, exited)
        finally:
            os.close(ready_read)
            if ready_write != -1:
                os.close(ready_write)
        if self._terminal is not None:
            await self._terminal.prepare()

    async def _wait_ready(self, ready_read: int, exited: asyncio.Future[Exit]) -> None:
        loop = asyncio.get_running_loop()
        os.set_blocking(ready_read, False)
        end_of_file = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(ready_read, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data and not end_of_file.done():
                end_of_file.set_result(None)

        loop.add_reader(ready_read, readable)
        try:
            async with asyncio.timeout(self._ready_timeout):
                await end_of_file
        except TimeoutError:
            self._kill_group()
            await self._stop_logger(0, term_timeout=0)
            raise StdioTimeout(
                f"logging binary {self._argv[0]} did not signal ready (close fd 5) within "
                f"{self._ready_timeout:g} s"
            ) from None
        finally:
            loop.remove_reader(ready_read)
        # Exiting also closes fd 5; an exit that failed is not "ready".
        await asyncio.sleep(0)
        if exited.done() and exited.result().status != 0:
            raise StdioError(
                f"logging binary {self._argv[0]} exited with status {exited.result().status} "
                "before it was ready"
            )

    @property
    def console_socket(self) -> str | None:
        return self._terminal.console_socket if self._terminal is not None else None

    def runtime_stdio(self) -> Stdio:
        if self._terminal is not None:
            return Stdio()
        return Stdio(None, self._pipes["stdout"][1], self._pipes["stderr"][1])

    async def start(self) -> None:
        if self._terminal is not None:
            await self._terminal.start()
        # runc's child holds the write ends; without ours the logger sees EOF as soon as the
        # container's processes are gone (runc-v2 keeps them until delete).
        self._close_pipes()

    async def wait_output(self) -> None:
        if self._terminal is not None:
            await self._terminal.wait_output()

    def output_drained(self) -> bool:
        return self._terminal is None or self._terminal.output_drained()

    def resize(self, width: int, height: int) -> None:
        if self._terminal is not None:
            self._terminal.resize(width, height)

    async def close(self, drain_timeout: float = 0.0) -> None:
        if self._terminal is not None:
            await self._terminal.close(drain_timeout)
        self._close_pipes()
        await self._stop_logger(drain_timeout)

    async def _stop_logger(self, grace: float, *, term_timeout: float = STOP_TIMEOUT) -> None:
        """Let the logger finish on its own (it has EOF), then TERM, then KILL."""
        exited, pid = self._logger_exit, self._logger_pid
        if exited is None or pid is None:
            return
        for signum, timeout in ((None, grace), (signal.SIGTERM, term_timeout),
                                (signal.SIGKILL, None)):
            if exited.done():
                break
            if signum == signal.SIGKILL:
                self._kill_group()
            elif signum is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(exited), timeout)
        self._logger_exit = None
        status = exited.result().status
        if status != 0:
            log.warning("%s: logging binary %s exited with status %d",
                        self._name, self._argv[0], status)

    def _kill_group(self) -> None:
        """SIGKILL to the logger's process group (pgid = its pid, while it or any member of
        its group lives; its pid cannot be reused for a group before the group is empty)."""
        if self._logger_pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._logger_pid, signal.SIGKILL)

    def _take(self, stream: str, end: int) -> int:
        fd = self._pipes[stream][end]
        self._pipes[stream][end] = -1
        return fd

    def _close_pipes(self) -> None:
        for ends in self._pipes.values():
            for index, fd in enumerate(ends):
                if fd != -1:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                    ends[index] = -1
