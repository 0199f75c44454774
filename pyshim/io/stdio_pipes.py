"""The pipe pairs between a process and whoever relays its stdio: the process's ends (handed to
the runtime, closed once it has them) and ours (relayed or pumped). Owns those fds only; never
copies a byte and never touches the process.
"""

from __future__ import annotations

import contextlib
import os

from pyshim.runtime import Stdio


class StdioPipes:
    """One pipe per stream asked for: stdin written by us, stdout/stderr read by us."""

    def __init__(self, *, stdin: bool, stdout: bool, stderr: bool) -> None:
        self._ours: dict[str, int] = {}
        self._theirs: dict[str, int] = {}
        try:
            if stdin:
                self._theirs["stdin"], self._ours["stdin"] = os.pipe2(os.O_CLOEXEC)
            for stream, wanted in (("stdout", stdout), ("stderr", stderr)):
                if wanted:
                    self._ours[stream], self._theirs[stream] = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def chown(self, uid: int, gid: int) -> None:
        """The process's ends to `uid`/`gid` (-1 leaves one as it is)."""
        for fd in self._theirs.values():
            os.fchown(fd, uid, gid)

    def runtime_stdio(self) -> Stdio:
        return Stdio(
            self._theirs.get("stdin"), self._theirs.get("stdout"), self._theirs.get("stderr")
        )

    def close_theirs(self, stream: str | None = None) -> None:
        """Once the runtime has them (all, or one stream's): only the process holds them."""
        for name in [stream] if stream is not None else list(self._theirs):
            with contextlib.suppress(KeyError, OSError):
                os.close(self._theirs.pop(name))

    def take(self, stream: str) -> int:
        """Our end of `stream`, now the caller's to close."""
        return self._ours.pop(stream)

    def unread_stderr(self, limit: int = 8191) -> bytes:
        """What the runtime wrote on stderr and nobody read (a failed create's reason)."""
        fd = self._ours.get("stderr")
        if fd is None:
            return b""
        try:
            os.set_blocking(fd, False)
            return os.read(fd, limit)
        except OSError:  # nothing there (EAGAIN), or the pipe is unusable
            return b""

    def close(self) -> None:
        """Every fd still held, ours and theirs (idempotent)."""
        for fd in (*self._ours.values(), *self._theirs.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._ours.clear()
        self._theirs.clear()
