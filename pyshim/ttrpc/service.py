"""Services as the server sees them: a full name and methods with typed request/reply.

Built from protobuf service descriptors, so the .proto file is the single source of method
names and message types. Knows nothing about connections.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler may know about its call besides the request message."""

    service: str
    method: str
    metadata: Mapping[str, tuple[str, ...]]
    # Absolute deadline on the event loop's clock, or None for none.
    deadline: float | None = None
    peer_pid: int | None = None


Handler = Callable[[Any, CallContext], Awaitable[Message | None]]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    request_type: type[Message]
    response_type: type[Message]
    handler: Handler


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    methods: Mapping[str, Method] = field(default_factory=dict)


def snake_case(name: str) -> str:
    """`ResizePty` → `resize_pty`, `CloseIO` → `close_io`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """A method as the descriptor defines it, before it is bound to an implementation."""

    name: str
    handler_name: str
    request_type: type[Message]
    response_type: type[Message]


def method_specs(descriptor: ServiceDescriptor) -> tuple[MethodSpec, ...]:
    """The descriptor's methods with their message classes and handler names. A process that
    forks servers (the shim's fork-server) computes these once, before the fork, so that no
    child runs the descriptor and message-class lookups (or writes to their objects)."""
    return tuple(
        MethodSpec(method.name, snake_case(method.name), GetMessageClass(method.input_type),
                   GetMessageClass(method.output_type))
        for method in descriptor.methods
    )


def bind(specs: tuple[MethodSpec, ...], implementation: object, name: str) -> Service:
    """Bind the methods to the implementation's snake_case coroutine methods.

    A method the implementation lacks is left out, so calling it answers UNIMPLEMENTED.
    """
    methods: dict[str, Method] = {}
    for spec in specs:
        handler = getattr(implementation, spec.handler_name, None)
        if handler is not None:
            methods[spec.name] = Method(spec.name, spec.request_type, spec.response_type,
                                        handler)
    return Service(name, methods)


def service_from_descriptor(
    descriptor: ServiceDescriptor, implementation: object, *, name: str | None = None
) -> Service:
    """Bind the descriptor's methods to the implementation's snake_case coroutine methods
    (see `bind`). `name` overrides the full service name (one implementation served as v2
    and v3)."""
    return bind(method_specs(descriptor), implementation, name or descriptor.full_name)
