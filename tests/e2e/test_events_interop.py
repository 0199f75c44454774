"""Our ttrpc client against a real containerd (1.6 or 1.7): events Forward on its .ttrpc
socket, as a shim publishes them (spec §4.1). `ctr events` must show each event with its
topic, namespace and payload; containerd's own refusals must come back as typed errors."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import uvloop
from google.protobuf import empty_pb2, timestamp_pb2
from google.protobuf.message import Message

from pyshim.protos.containerd.events import task_pb2 as events_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.ttrpc import Client, InvalidArgument
from tests.e2e.containerd import PrivateContainerd, parse_event_line
from tests.e2e.containerd_versions import containerd_behaviour, parse_event_timestamp

EVENTS = "containerd.services.events.ttrpc.v1.Events"


def forward_request(namespace: str, topic: str, event: Message, *, stamped: bool = True) -> Any:
    envelope = forward_pb2.Envelope(namespace=namespace, topic=topic)
    if stamped:
        envelope.timestamp.GetCurrentTime()
    # containerd wants the bare full name as type URL (Any.Pack would add a prefix).
    envelope.event.type_url = event.DESCRIPTOR.full_name
    envelope.event.value = event.SerializeToString()
    return forward_pb2.ForwardRequest(envelope=envelope)


async def forward(address: str, *requests: Any) -> None:
    async with await Client.connect(address, timeout=5) as client:
        await asyncio.gather(*(
            client.call(EVENTS, "Forward", request, empty_pb2.Empty, timeout=5,
                        metadata={"containerd-namespace-ttrpc": request.envelope.namespace})
            for request in requests
        ))


def test_forwarded_exit_event_reaches_subscribers(containerd: PrivateContainerd) -> None:
    exit_event = events_pb2.TaskExit(
        container_id="c1", id="c1", pid=5678, exit_status=3,
        exited_at=timestamp_pb2.Timestamp(seconds=1700000000, nanos=120_000_000),
    )
    with containerd.subscribe_events() as events:
        uvloop.run(forward(f"unix://{containerd.ttrpc_address}",
                           forward_request("default", "/tasks/exit", exit_event)))
        line = events.wait_for_topic("/tasks/exit")
    assert line.namespace == "default"
    # ctr prints the Timestamp as RFC 3339 on 1.6 and as {"seconds", "nanos"} on 1.7.
    printed_exited_at = {
        "rfc3339": "2023-11-14T22:13:20.12Z",
        "object": {"seconds": 1700000000, "nanos": 120_000_000},
    }[containerd_behaviour().event_timestamp_form]
    assert line.event == {
        "container_id": "c1", "id": "c1", "pid": 5678, "exit_status": 3,
        "exited_at": printed_exited_at,
    }
    assert parse_event_timestamp(printed_exited_at) == datetime(
        2023, 11, 14, 22, 13, 20, 120_000, tzinfo=UTC
    )


def test_many_concurrent_forwards_on_one_connection_all_arrive(
    containerd: PrivateContainerd,
) -> None:
    requests = [
        forward_request("pyshim-e2e", "/tasks/exec-started",
                        events_pb2.TaskExecStarted(container_id="c2", exec_id=f"e{i}", pid=i + 1))
        for i in range(100)
    ]
    expected = {f'"exec_id":"e{i}"' for i in range(100)}
    seen: set[str] = set()

    def last_of_them(line: str) -> bool:
        # Concurrent forwards reach subscribers in no set order: wait for all 100, not e99.
        seen.update(marker for marker in expected if marker in line)
        return seen == expected

    with containerd.subscribe_events() as events:
        uvloop.run(forward(str(containerd.ttrpc_address), *requests))
        events.wait_for(last_of_them)
        lines = [parse_event_line(line) for line in events.lines()]
    started = [line for line in lines if line.topic == "/tasks/exec-started"]
    assert {line.namespace for line in started} == {"pyshim-e2e"}
    assert sorted(line.event["exec_id"] for line in started if line.event) == sorted(
        f"e{i}" for i in range(100)
    )


@pytest.mark.parametrize(
    ("namespace", "topic", "stamped", "reason"),
    [
        ("default", "/tasks/?", True, "topic"),
        ("not a namespace!", "/tasks/oom", True, "namespace"),
    ],
)
def test_containerd_refusals_come_back_as_invalid_argument(
    containerd: PrivateContainerd,
    namespace: str,
    topic: str,
    stamped: bool,
    reason: str,
) -> None:
    oom = events_pb2.TaskOOM(container_id="c3")
    request = forward_request(namespace, topic, oom, stamped=stamped)
    with pytest.raises(InvalidArgument) as refused:
        uvloop.run(forward(str(containerd.ttrpc_address), request))
    assert reason in refused.value.message


def test_forward_without_timestamp_is_refused_by_1_6_and_stamped_1970_by_1_7(
    containerd: PrivateContainerd,
) -> None:
    # Absent, not zero: containerd 1.6.20 takes Timestamp{0, 0} (1970) without complaint, but
    # refuses an envelope without one; 1.7 takes that too and publishes it as of 1970.
    request = forward_request(
        "default", "/tasks/oom", events_pb2.TaskOOM(container_id="c-unstamped"), stamped=False
    )
    if containerd_behaviour().refuses_unstamped_forward:
        with pytest.raises(InvalidArgument) as refused:
            uvloop.run(forward(str(containerd.ttrpc_address), request))
        assert "timestamp must be set" in refused.value.message
        return
    with containerd.subscribe_events() as events:
        uvloop.run(forward(str(containerd.ttrpc_address), request))
        line = parse_event_line(events.wait_for(lambda text: '"c-unstamped"' in text))
    assert (line.namespace, line.topic, line.event) == (
        "default", "/tasks/oom", {"container_id": "c-unstamped"}
    )
    assert line.timestamp.startswith("1970-01-01 00:00:00 "), line.timestamp


def test_client_sees_containerd_go_away(containerd: PrivateContainerd) -> None:
    """A connection to containerd that is stopped fails with a clean error, not a hang."""

    async def scenario() -> None:
        async with await Client.connect(str(containerd.ttrpc_address), timeout=5) as client:
            await client.call(EVENTS, "Forward", forward_request(
                "default", "/tasks/oom", events_pb2.TaskOOM(container_id="c4")),
                empty_pb2.Empty, timeout=5)
            await asyncio.get_running_loop().run_in_executor(None, containerd.stop_daemon)
            started = time.monotonic()
            with pytest.raises(Exception) as failure:
                await client.call(EVENTS, "Forward", forward_request(
                    "default", "/tasks/oom", events_pb2.TaskOOM(container_id="c4")),
                    empty_pb2.Empty, timeout=5)
            assert time.monotonic() - started < 5
            assert type(failure.value).__name__ == "ConnectionClosed"

    uvloop.run(scenario())
