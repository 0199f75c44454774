"""Event envelopes: the Forward request containerd expects and the queued form of one event.
Owns encoding and the critical-topic rule; never queues, stores or sends anything.
"""

from __future__ import annotations

import time

from google.protobuf.message import DecodeError, Message

from pyshim.protos.containerd.events import task_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2

# Never dropped while the shim lives (CRI needs both to report how a container ended).
CRITICAL_TOPICS = frozenset({"/tasks/exit", "/tasks/oom"})


def envelope(namespace: str, topic: str, event: Message) -> forward_pb2.ForwardRequest:
    """A Forward request; the type URL is the bare full name, as containerd expects."""
    request = forward_pb2.ForwardRequest()
    # Timestamp.GetCurrentTime's value (now, to the microsecond) without its Python code
    # (datetime, calendar.timegm), which would be copied into each daemon at its first event.
    now_us = time.time_ns() // 1000
    request.envelope.timestamp.seconds = now_us // 1_000_000
    request.envelope.timestamp.nanos = now_us % 1_000_000 * 1000
    request.envelope.namespace = namespace
    request.envelope.topic = topic
    request.envelope.event.type_url = event.DESCRIPTOR.full_name
    request.envelope.event.value = event.SerializeToString()
    return request


def container_of(request: forward_pb2.ForwardRequest) -> str:
    """The container an envelope is about: field 1 (container_id) of every containerd task
    event; read through TaskOOM, whose only field it is (the others are kept as unknown)."""
    try:
        return task_pb2.TaskOOM.FromString(request.envelope.event.value).container_id
    except DecodeError:
        return ""


class Item:
    """One queued envelope: serialized (its size is what memory is bounded by)."""

    __slots__ = ("container", "critical", "data", "seq", "topic")

    def __init__(self, seq: int, data: bytes, topic: str, container: str) -> None:
        self.seq = seq
        self.data = data
        self.topic = topic
        self.container = container
        self.critical = topic in CRITICAL_TOPICS

    @classmethod
    def from_bytes(cls, seq: int, data: bytes) -> Item:
        request = forward_pb2.ForwardRequest.FromString(data)
        return cls(seq, data, request.envelope.topic, container_of(request))

    def __repr__(self) -> str:
        return f"{self.topic} of {self.container or '?'}"
