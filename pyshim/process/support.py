"""What both halves of a Container share: a runtime failure named for its process, and a
process's stdio opened and prepared, with every failure as an engine error.

No state of its own; never decides what happens next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyshim.errors import DeadlineExceeded, EngineError, InvalidInput, RuntimeFailed, Unsupported
from pyshim.io import (
    IOContext,
    ProcessIO,
    StdioConfig,
    StdioError,
    StdioTimeout,
    UnsupportedStdio,
    open_process_io,
)
from pyshim.runtime import OCIRuntimeError, RuntimeTimeout

if TYPE_CHECKING:
    from pyshim.process.base import Process


def runtime_error(process: Process, what: str, error: OCIRuntimeError) -> EngineError:
    """A failed runtime command as the error the caller gets: a hung one is DeadlineExceeded,
    any other RuntimeFailed (with the runtime's own message as `cause`)."""
    message = f"{process.label}: {what}: {error.message}"
    if isinstance(error, RuntimeTimeout):
        return DeadlineExceeded(message, **process.names, cause=error.message)
    failed = RuntimeFailed(message, **process.names, cause=error.message)
    failed.command, failed.exit_status = error.command, error.status
    return failed


async def open_io(stdio: StdioConfig, context: IOContext, container_id: str,
                  exec_id: str | None) -> ProcessIO:
    """The process's stdio, prepared (a logging binary ready, a console socket listening)."""
    label = f"container {container_id} process {context.process_id}"
    names = {"container_id": container_id, "process_id": exec_id or ""}
    try:
        io = open_process_io(stdio, context)
    except UnsupportedStdio as error:
        if error.unimplemented:
            raise Unsupported(f"{label}: {error}", **names) from error
        raise InvalidInput(f"{label}: {error}", **names) from error
    except OSError as error:
        raise InvalidInput(
            f"{label}: cannot open stdio {error.filename or ''}: {error.strerror}", **names,
            cause=str(error.strerror),
        ) from error
    try:
        await io.prepare()
    except BaseException as error:
        await io.close()
        if isinstance(error, UnsupportedStdio):
            raise InvalidInput(f"{label}: {error}", **names) from error
        if isinstance(error, StdioTimeout):
            raise DeadlineExceeded(f"{label}: {error}", **names) from error
        if isinstance(error, StdioError | OSError):
            raise EngineError(f"{label}: cannot set up stdio: {error}", **names) from error
        raise
    return io
