"""The engine's own error types: what went wrong, for which container and process, and why.

Raised low (process/, runtime.py, io/, mount/, options.py) and never translated there; each
front end maps them in one place (containerd: pyshim/shim/errors.py to ttrpc status codes;
conmon: its exit codes and sync-pipe messages). Lean on purpose: no imports, as `str(error)` is
the whole message a front end shows.

Every error has `message` (the full text, already naming container and process), and, where
known, `container_id`, `process_id` ("" for the init or when unknown) and `cause` (the lower
reason alone, e.g. runc's own error line).
"""

from __future__ import annotations


class EngineError(Exception):
    """A failure with no more specific kind (containerd: UNKNOWN)."""

    def __init__(
        self, message: str, *, container_id: str = "", process_id: str = "", cause: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.container_id = container_id
        self.process_id = process_id
        self.cause = cause

    def __str__(self) -> str:
        return self.message


class NotFound(EngineError):
    """No such container or process, or it is gone (exited, deleted)."""


class AlreadyExists(EngineError):
    """A container or exec of that id exists already."""


class WrongState(EngineError):
    """The process's state does not allow the operation (runc-v2 answers these UNKNOWN)."""


class FailedPrecondition(WrongState):
    """The operation needs something that is not the case yet (or no more): an exec that was
    never started, an init that is no longer running, a terminal that cannot be resized."""


class InvalidInput(EngineError):
    """The caller asked for something malformed: a missing bundle, a bad stdio URI or option."""


class Unsupported(EngineError):
    """A valid request for a feature this engine does not have."""


class DeadlineExceeded(EngineError):
    """Something the engine waited for (a runtime command, a logging binary, a console) did
    not finish within its time limit; it was stopped."""


class RuntimeFailed(EngineError):
    """The OCI runtime (runc) failed; `cause` is its own message, `command` the runtime
    command (create, start, exec, kill, …), `exit_status` its exit status if it exited, and
    `stderr` what it wrote on the process's stderr pipe (create/restore/exec with piped stdio:
    the text conmon sends its parent)."""

    command: str = ""
    exit_status: int | None = None
    stderr: bytes = b""
