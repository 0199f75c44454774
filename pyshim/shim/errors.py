"""The one place where engine errors become ttrpc status errors (what containerd sees).

`rpc_error()` maps an EngineError to the RPCError of its kind, message unchanged (the ttrpc type
adds containerd's class text, e.g. ": not found"); `engine_errors_mapped` wraps a Task handler so
that whatever engine error escapes it is mapped. Never used by the engine itself.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from pyshim import errors
from pyshim.ttrpc import status

P = ParamSpec("P")
T = TypeVar("T")

# Most specific kind first: a runc timeout is both RuntimeFailed and DeadlineExceeded.
_CODES: tuple[tuple[type[errors.EngineError], type[status.RPCError]], ...] = (
    (errors.DeadlineExceeded, status.DeadlineExceeded),
    (errors.NotFound, status.NotFound),
    (errors.AlreadyExists, status.AlreadyExists),
    (errors.FailedPrecondition, status.FailedPrecondition),
    (errors.WrongState, status.Unknown),  # runc-v2's refusals ("cannot start a running …")
    (errors.InvalidInput, status.InvalidArgument),
    (errors.Unsupported, status.Unimplemented),
    (errors.RuntimeFailed, status.Unknown),
)


def rpc_error(error: errors.EngineError) -> status.RPCError:
    """The ttrpc status error containerd gets for `error` (UNKNOWN for an unclassified one)."""
    for kind, rpc_type in _CODES:
        if isinstance(error, kind):
            return rpc_type(error.message)
    return status.Unknown(error.message)


def engine_errors_mapped(
    handler: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`handler`, with any EngineError it raises re-raised as its ttrpc status error."""

    @functools.wraps(handler)
    async def mapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except errors.EngineError as error:
            raise rpc_error(error) from error

    return mapped
