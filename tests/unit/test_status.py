"""Exception → status mapping and containerd's message wording (spec §2.4 to §2.6)."""

from __future__ import annotations

import asyncio
import errno

import pytest

from pyshim.ttrpc.status import (
    AlreadyExists,
    Code,
    ConnectionClosed,
    FailedPrecondition,
    NotFound,
    RPCError,
    Unimplemented,
    Unknown,
    status_for_exception,
)


def test_typed_errors_carry_containerd_class_text_once() -> None:
    assert status_for_exception(NotFound("container not created")) == (
        Code.NOT_FOUND,
        "container not created: not found",
    )
    assert NotFound("process already finished: not found").wire_message == (
        "process already finished: not found"
    )
    assert AlreadyExists("id e1").wire_message == "id e1: already exists"
    assert FailedPrecondition("process not created").wire_message == (
        "process not created: failed precondition"
    )
    assert Unimplemented("checkpoint is not supported").code == Code.UNIMPLEMENTED
    assert Unknown("cannot start a running process").wire_message == (
        "cannot start a running process"
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (FileNotFoundError(errno.ENOENT, "no such file"), Code.NOT_FOUND),
        (FileExistsError(errno.EEXIST, "exists"), Code.ALREADY_EXISTS),
        (PermissionError(errno.EACCES, "denied"), Code.PERMISSION_DENIED),
        (BrokenPipeError(errno.EPIPE, "broken pipe"), Code.FAILED_PRECONDITION),
        (TimeoutError(), Code.DEADLINE_EXCEEDED),
        (asyncio.CancelledError(), Code.CANCELLED),
        (NotImplementedError("nope"), Code.UNIMPLEMENTED),
        (EOFError("eof"), Code.OUT_OF_RANGE),
        (RuntimeError("runc exploded"), Code.UNKNOWN),
        (KeyError("x"), Code.UNKNOWN),
    ],
)
def test_plain_exceptions_map_like_go_ttrpc(error: BaseException, code: Code) -> None:
    assert status_for_exception(error)[0] == code


def test_unknown_error_message_is_the_error_text() -> None:
    assert status_for_exception(RuntimeError("runc exploded")) == (Code.UNKNOWN, "runc exploded")
    assert status_for_exception(RuntimeError()) == (Code.UNKNOWN, "RuntimeError")


def test_from_status_gives_the_typed_error_and_keeps_the_wire_message() -> None:
    error = RPCError.from_status(5, "container not created: not found")
    assert isinstance(error, NotFound)
    assert error.message == "container not created: not found"
    assert str(error) == "container not created: not found"
    odd = RPCError.from_status(99, "from the future")
    assert isinstance(odd, Unknown)
    assert odd.received_code == 99


def test_connection_closed_is_unavailable_with_go_text() -> None:
    error = ConnectionClosed()
    assert error.code == Code.UNAVAILABLE
    assert str(error) == "ttrpc: closed"
