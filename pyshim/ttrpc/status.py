"""Status codes and the error types that carry them across ttrpc.

Owns the one mapping from Python exceptions to (code, message) pairs (spec §2.4 to §2.6); knows
nothing about sockets or frames. Servers raise these; clients receive them.
"""

from __future__ import annotations

import asyncio
import errno
from enum import IntEnum
from typing import ClassVar


class Code(IntEnum):
    """gRPC status codes, as ttrpc puts them in google.rpc.Status.code."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class RPCError(Exception):
    """An error with a status code. Raised by handlers, received by clients.

    containerd words its messages "<context>: <class text>" (e.g. "container not created: not
    found") and its clients strip the class text again; `wire_message` adds it the same way.
    """

    code: ClassVar[Code] = Code.UNKNOWN
    class_text: ClassVar[str] = ""
    # For errors received from the wire with a code we have no class for.
    received_code: int | None = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    @property
    def wire_message(self) -> str:
        text = self.class_text
        if not text or self.message == text or self.message.endswith(": " + text):
            return self.message
        return f"{self.message}: {text}" if self.message else text

    def __str__(self) -> str:
        return self.wire_message

    @staticmethod
    def from_status(code: int, message: str) -> RPCError:
        """The typed error for a status received from the wire (unknown codes → Unknown)."""
        error_type = _ERROR_TYPES.get(code, Unknown)
        error = error_type(message)
        if error_type is Unknown and code != Code.UNKNOWN:
            error.received_code = code
        return error


class Cancelled(RPCError):
    code = Code.CANCELLED


class Unknown(RPCError):
    code = Code.UNKNOWN


class InvalidArgument(RPCError):
    code = Code.INVALID_ARGUMENT
    class_text = "invalid argument"


class DeadlineExceeded(RPCError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(RPCError):
    code = Code.NOT_FOUND
    class_text = "not found"


class AlreadyExists(RPCError):
    code = Code.ALREADY_EXISTS
    class_text = "already exists"


class PermissionDenied(RPCError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(RPCError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(RPCError):
    code = Code.FAILED_PRECONDITION
    class_text = "failed precondition"


class Aborted(RPCError):
    code = Code.ABORTED


class OutOfRange(RPCError):
    code = Code.OUT_OF_RANGE


class Unimplemented(RPCError):
    code = Code.UNIMPLEMENTED
    class_text = "not implemented"


class Internal(RPCError):
    code = Code.INTERNAL


class Unavailable(RPCError):
    code = Code.UNAVAILABLE
    class_text = "unavailable"


class DataLoss(RPCError):
    code = Code.DATA_LOSS


class Unauthenticated(RPCError):
    code = Code.UNAUTHENTICATED


class ConnectionClosed(Unavailable):
    """The connection went away with the call in flight (Go's ErrClosed, "ttrpc: closed")."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)

    @property
    def wire_message(self) -> str:
        return self.message


_ERROR_TYPES: dict[int, type[RPCError]] = {
    error_type.code: error_type
    for error_type in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated,
    )
}

# Plain OS errors, classified as Go's ttrpc classifies the corresponding Go errors (spec §2.4).
_ERRNO_CODES = {
    errno.ENOENT: Code.NOT_FOUND,
    errno.EEXIST: Code.ALREADY_EXISTS,
    errno.EPERM: Code.PERMISSION_DENIED,
    errno.EACCES: Code.PERMISSION_DENIED,
    errno.EPIPE: Code.FAILED_PRECONDITION,
    errno.EINVAL: Code.INVALID_ARGUMENT,
}


def status_for_exception(error: BaseException) -> tuple[Code, str]:
    """The (code, message) a server sends for an exception its handler raised."""
    if isinstance(error, RPCError):
        return error.code, error.wire_message
    message = str(error) or type(error).__name__
    if isinstance(error, TimeoutError):
        return Code.DEADLINE_EXCEEDED, str(error) or "context deadline exceeded"
    if isinstance(error, asyncio.CancelledError):
        return Code.CANCELLED, "context canceled"
    if isinstance(error, NotImplementedError):
        return Code.UNIMPLEMENTED, message
    if isinstance(error, EOFError):
        return Code.OUT_OF_RANGE, message
    if isinstance(error, OSError) and error.errno in _ERRNO_CODES:
        return _ERRNO_CODES[error.errno], message
    return Code.UNKNOWN, message
