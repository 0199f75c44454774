"""ttrpc for asyncio: containerd's lightweight RPC protocol over unix sockets.

Self-contained (depends only on protobuf): frame codec and connection state machines are
sans-IO (`frame`, `connection`); `server` and `client` put asyncio sockets around them.
"""

from pyshim.ttrpc.client import Client, socket_path
from pyshim.ttrpc.server import Server, listen_unix, peer_credentials
from pyshim.ttrpc.service import (
    CallContext,
    Method,
    MethodSpec,
    Service,
    bind,
    method_specs,
    service_from_descriptor,
)
from pyshim.ttrpc.status import (
    AlreadyExists,
    Cancelled,
    Code,
    ConnectionClosed,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RPCError,
    Unavailable,
    Unimplemented,
    Unknown,
    status_for_exception,
)

__all__ = [
    "AlreadyExists",
    "CallContext",
    "Cancelled",
    "Client",
    "Code",
    "ConnectionClosed",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "Method",
    "MethodSpec",
    "NotFound",
    "PermissionDenied",
    "RPCError",
    "ResourceExhausted",
    "Server",
    "Service",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "bind",
    "listen_unix",
    "method_specs",
    "peer_credentials",
    "service_from_descriptor",
    "socket_path",
    "status_for_exception",
]
