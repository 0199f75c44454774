"""The interface every stdio backend implements, and the request it is built from.

The process layer drives a ProcessIO without knowing the backend: prepare before runc, start
after it, wait_output after the exit, close at delete. Nothing here touches a file descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyshim.errors import DeadlineExceeded, EngineError, InvalidInput
from pyshim.runtime import Stdio


class StdioError(EngineError):
    """The stdio could not be set up; the message names what and why."""


class UnsupportedStdio(StdioError, InvalidInput):
    """The stdio strings ask for something we cannot do; `unimplemented` if it is a feature
    this version lacks rather than bad input."""

    def __init__(self, message: str, *, unimplemented: bool = False) -> None:
        super().__init__(message)
        self.unimplemented = unimplemented


class StdioTimeout(StdioError, DeadlineExceeded):
    """A party we wait for during set-up (a logging binary, runc's console) never answered."""


@dataclass(frozen=True, slots=True)
class StdioConfig:
    """containerd's stdio request: three strings (FIFO paths or URIs) and the terminal flag."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def is_null(self) -> bool:
        return not (self.stdin or self.stdout or self.stderr)


class ProcessIO:
    """The interface the process layer drives; this base class is the no-I/O case."""

    async def prepare(self) -> None:
        """Before runc create/exec: whatever must be running or listening first."""

    def runtime_stdio(self) -> Stdio:
        """fds runc passes on as the process's 0, 1, 2 (None = /dev/null)."""
        return Stdio()

    @property
    def console_socket(self) -> str | None:
        """The socket runc sends the pty master to (terminal mode only)."""
        return None

    async def start(self) -> None:
        """After runc create/exec succeeded: let go of the container's ends, start relaying."""

    def unread_stderr(self, limit: int = 8191) -> bytes:
        """Before start(), after the runtime failed: what it wrote on the process's stderr (its
        error text, which conmon's parent wants). Never blocks; b"" when there is none."""
        return b""

    async def wait_output(self) -> None:
        """After the process exited: until every byte it wrote has been relayed."""

    def output_drained(self) -> bool:
        """Whether wait_output() would return at once (the exit need not wait a loop turn)."""
        return True

    def close_stdin(self) -> None:
        """CloseIO: the container sees EOF once the client's writer is gone too."""

    def resize(self, width: int, height: int) -> None:
        """ResizePty; without a terminal there is nothing to resize."""

    async def close(self, drain_timeout: float = 0.0) -> None:
        """At delete (or a failed create): wait up to drain_timeout for the relays to reach
        EOF (not for a reader that went away: its spooled bytes are dropped and counted),
        then stop them and release every fd."""


class NullIO(ProcessIO):
    pass
