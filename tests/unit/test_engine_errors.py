"""Engine errors and the containerd front end's one mapping of them to ttrpc status codes.

containerd sees exactly what it saw when the engine raised ttrpc errors itself: the same code
and the same wire message (the class text, e.g. ": not found", added by the ttrpc type).
"""

from __future__ import annotations

import asyncio

import pytest

from pyshim import errors
from pyshim.io.base import StdioTimeout, UnsupportedStdio
from pyshim.mount import MountError
from pyshim.runtime import OCIRuntimeError, RuntimeTimeout
from pyshim.shim.errors import engine_errors_mapped, rpc_error
from pyshim.ttrpc.status import Code, status_for_exception


@pytest.mark.parametrize(("error", "code", "wire"), [
    (errors.NotFound("container c1: container not created"), Code.NOT_FOUND,
     "container c1: container not created: not found"),
    (errors.AlreadyExists("container c1: id e1"), Code.ALREADY_EXISTS,
     "container c1: id e1: already exists"),
    (errors.WrongState("container c1: cannot start a running process"), Code.UNKNOWN,
     "container c1: cannot start a running process"),
    (errors.FailedPrecondition("container c1 exec e1: process not created"),
     Code.FAILED_PRECONDITION, "container c1 exec e1: process not created: failed precondition"),
    (errors.InvalidInput("container c1: bundle /b does not exist"), Code.INVALID_ARGUMENT,
     "container c1: bundle /b does not exist: invalid argument"),
    (errors.Unsupported("binary:// stdio is not available here"), Code.UNIMPLEMENTED,
     "binary:// stdio is not available here: not implemented"),
    (errors.DeadlineExceeded("container c1: OCI runtime start failed: hung"),
     Code.DEADLINE_EXCEEDED, "container c1: OCI runtime start failed: hung"),
    (errors.RuntimeFailed("container c1: OCI runtime create failed: boom"), Code.UNKNOWN,
     "container c1: OCI runtime create failed: boom"),
    (errors.EngineError("container c1: cannot set up stdio: x"), Code.UNKNOWN,
     "container c1: cannot set up stdio: x"),
])
def test_each_kind_has_its_code_and_keeps_its_message(
        error: errors.EngineError, code: Code, wire: str) -> None:
    assert status_for_exception(rpc_error(error)) == (code, wire)


def test_low_level_errors_are_engine_errors_of_their_kind() -> None:
    timeout = RuntimeTimeout("start", "runc start did not finish within 1 s; killed it")
    assert isinstance(timeout, errors.DeadlineExceeded)
    assert status_for_exception(rpc_error(timeout))[0] == Code.DEADLINE_EXCEEDED
    failed = OCIRuntimeError("create", "exec failed", 1)
    assert isinstance(failed, errors.RuntimeFailed)
    assert (failed.command, failed.exit_status, failed.cause) == ("create", 1, "exec failed")
    assert isinstance(StdioTimeout("no console"), errors.DeadlineExceeded)
    assert isinstance(UnsupportedStdio("bad scheme"), errors.InvalidInput)
    mount_error = MountError("overlay", "overlay", "/b/rootfs", "no such file or directory")
    assert isinstance(mount_error, errors.EngineError)
    assert mount_error.cause == "no such file or directory"


def test_errors_carry_container_process_and_cause() -> None:
    error = errors.NotFound("container c1 exec e1: process already finished",
                            container_id="c1", process_id="e1", cause="ESRCH")
    assert (error.container_id, error.process_id, error.cause) == ("c1", "e1", "ESRCH")
    assert str(error) == "container c1 exec e1: process already finished"


def test_a_wrapped_handler_raises_the_status_error_from_the_engine_error() -> None:
    @engine_errors_mapped
    async def handler(container_id: str) -> None:
        raise errors.NotFound(f"container {container_id}: container not created")

    with pytest.raises(Exception) as raised:
        asyncio.run(handler("c9"))
    assert status_for_exception(raised.value) == (
        Code.NOT_FOUND, "container c9: container not created: not found")
    assert isinstance(raised.value.__cause__, errors.NotFound)
