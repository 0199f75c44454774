"""Asking live shims over their ttrpc sockets (pyshim.introspect.v1.Introspect), all at once
and each within a bound: one stuck shim costs `ps` at most TIMEOUT, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import Message

from pyshim.protos.pyshim.introspect.v1 import introspect_pb2
from pyshim.ttrpc import Client
from pyshim.ttrpc.status import RPCError

SERVICE = "pyshim.introspect.v1.Introspect"
#: Per shim: connect and answer within this many seconds, or it shows as not answering.
TIMEOUT = 1.0
ReplyT = TypeVar("ReplyT", bound=Message)
#: A debug dump walks every task of the shim: allow it longer.
DEBUG_TIMEOUT = 10.0


class ShimUnreachable(Exception):
    """The shim did not answer (the message says how it failed)."""


async def describe(socket: str, timeout: float = TIMEOUT) -> introspect_pb2.DescribeResponse:
    return await _call(socket, "Describe", introspect_pb2.DescribeRequest(),
                       introspect_pb2.DescribeResponse, timeout)


async def debug(socket: str, timeout: float = DEBUG_TIMEOUT) -> str:
    reply = await _call(socket, "Debug", introspect_pb2.DebugRequest(),
                        introspect_pb2.DebugResponse, timeout)
    return reply.dump


async def _call(socket: str, method: str, request: Message, reply_type: type[ReplyT],
                timeout: float) -> ReplyT:
    try:
        async with asyncio.timeout(timeout):
            async with await Client.connect(socket, timeout=timeout) as client:
                return await client.call(SERVICE, method, request, reply_type, timeout=timeout)
    except TimeoutError as error:
        raise ShimUnreachable(f"no answer within {timeout:g} s") from error
    except (OSError, RPCError) as error:
        raise ShimUnreachable(str(error) or type(error).__name__) from error


async def describe_all(
    sockets: Sequence[str], timeout: float = TIMEOUT
) -> list[introspect_pb2.DescribeResponse | ShimUnreachable]:
    """Describe of each socket, in order: the reply, or the ShimUnreachable it raised."""
    async def one(socket: str) -> introspect_pb2.DescribeResponse | ShimUnreachable:
        try:
            return await describe(socket, timeout)
        except ShimUnreachable as error:
            return error

    return list(await asyncio.gather(*(one(socket) for socket in sockets)))
