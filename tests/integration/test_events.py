"""The event publisher against a real ttrpc server standing in for containerd's Events service
on a unix socket: order, containerd away and back, refused events, overflow to the spool and
back, a crashed sender restarted, and the memory bound."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from google.protobuf import empty_pb2

from pyshim.events import SPOOL_NAME, Publisher, container_of
from pyshim.protos.containerd.events import task_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.ttrpc import (
    CallContext,
    Internal,
    InvalidArgument,
    NotFound,
    Server,
    listen_unix,
    service_from_descriptor,
)

T = TypeVar("T")
NAMESPACE = "k8s.io"
# Fast retries: these tests wait for outcomes, never for a time.
FAST: dict[str, Any] = {"retry_first": 0.005, "retry_max": 0.02}


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await scenario()

    return uvloop.run(bounded())


Refusal = Callable[[str, str, int], Exception | None]


class FakeContainerd:
    """containerd's Events/Forward: records what it accepts; `refuse(topic, container, attempt)`
    may return an exception to answer with instead."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.accepted: list[tuple[str, str]] = []
        self.attempts: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[forward_pb2.ForwardRequest, CallContext]] = []
        self.refuse: Refusal = lambda topic, container, attempt: None
        self._changed = asyncio.Event()
        self._server: Server | None = None

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for condition on what arrived (the test's overall timeout bounds the wait)."""
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def start(self) -> None:
        descriptor = forward_pb2.DESCRIPTOR.services_by_name["Events"]
        self._server = Server([service_from_descriptor(descriptor, self)])
        await self._server.start(listen_unix(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None
        # Python 3.13's loop removes a unix server's socket file itself as it closes.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def forward(
        self, request: forward_pb2.ForwardRequest, context: CallContext
    ) -> empty_pb2.Empty:
        key = (request.envelope.topic, container_of(request))
        self.attempts[key] = attempt = self.attempts.get(key, 0) + 1
        self._changed.set()
        error = self.refuse(*key, attempt)
        if error is not None:
            raise error
        self.requests.append((request, context))
        self.accepted.append(key)
        return empty_pb2.Empty()

    def of(self, container: str) -> list[str]:
        return [topic for topic, owner in self.accepted if owner == container]


def lifecycle(publisher: Publisher, container: str) -> list[str]:
    """create, start, exit, delete of one container; returns the topics in order."""
    publisher.publish("/tasks/create", task_pb2.TaskCreate(container_id=container, pid=7))
    publisher.publish("/tasks/start", task_pb2.TaskStart(container_id=container, pid=7))
    publisher.publish("/tasks/exit", task_pb2.TaskExit(container_id=container, id=container,
                                                       pid=7, exit_status=3))
    publisher.publish("/tasks/delete", task_pb2.TaskDelete(container_id=container, pid=7))
    return ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


def starts(publisher: Publisher, container: str, count: int) -> list[tuple[str, str]]:
    """`count` exec-added events, told apart by their exec ids (e0, e1, …)."""
    for index in range(count):
        publisher.publish("/tasks/exec-added",
                          task_pb2.TaskExecAdded(container_id=container, exec_id=f"e{index}"))
    return [("/tasks/exec-added", container)] * count


def exec_ids(containerd: FakeContainerd) -> list[str]:
    return [task_pb2.TaskExecAdded.FromString(request.envelope.event.value).exec_id
            for request, _ in containerd.requests
            if request.envelope.topic == "/tasks/exec-added"]


def test_events_arrive_in_order_as_containerd_expects_them(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        await containerd.start()
        publisher = Publisher(f"unix://{containerd.path}", NAMESPACE)
        publisher.start()
        topics = lifecycle(publisher, "c1")
        assert await publisher.flush(20)
        assert containerd.of("c1") == topics
        assert publisher.sent == 4 and publisher.pending == 0
        request, context = containerd.requests[2]
        assert request.envelope.namespace == NAMESPACE
        assert request.envelope.timestamp.seconds > 0
        assert request.envelope.event.type_url == "containerd.events.TaskExit"
        assert task_pb2.TaskExit.FromString(request.envelope.event.value).exit_status == 3
        assert context.metadata["containerd-namespace-ttrpc"] == (NAMESPACE,)
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_containerd_away_and_back_loses_nothing_and_keeps_order(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        publisher = Publisher(containerd.path, NAMESPACE, **FAST)
        publisher.start()
        expected = lifecycle(publisher, "c1")  # nobody listening yet
        await containerd.start()
        assert await publisher.flush(20)
        await containerd.stop()
        publisher.publish("/tasks/oom", task_pb2.TaskOOM(container_id="c2"))
        expected += lifecycle(publisher, "c2")
        await containerd.start()
        assert await publisher.flush(20)
        assert [topic for topic, _ in containerd.accepted] == [
            *expected[:4], "/tasks/oom", *expected[4:]]
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_a_refused_event_holds_back_only_its_own_container(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        released = False

        def refuse(topic: str, container: str, attempt: int) -> Exception | None:
            return None if released or container != "bad" else NotFound("no such thing")

        containerd.refuse = refuse
        await containerd.start()
        publisher = Publisher(containerd.path, NAMESPACE, **FAST, refusals_before_drop=10**6)
        publisher.start()
        publisher.publish("/tasks/create", task_pb2.TaskCreate(container_id="bad"))
        topics = lifecycle(publisher, "good")
        publisher.publish("/tasks/start", task_pb2.TaskStart(container_id="bad"))
        # Everything of "good" overtakes "bad"'s create, refused again and again meanwhile.
        await containerd.until(lambda: containerd.of("good") == topics
                    and containerd.attempts[("/tasks/create", "bad")] >= 3)
        assert containerd.of("bad") == []
        assert ("/tasks/start", "bad") not in containerd.attempts
        released = True
        assert await publisher.flush(20)
        assert containerd.of("bad") == ["/tasks/create", "/tasks/start"]
        assert publisher.dropped == 0
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_an_event_refused_for_good_is_dropped_and_its_container_goes_on(
    short_tmp: Path,
) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))

        def refuse(topic: str, container: str, attempt: int) -> Exception | None:
            if topic == "/tasks/paused":
                return RuntimeError("a handler bug in containerd")  # answered as Unknown
            if topic == "/tasks/checkpointed":
                return InvalidArgument("bad envelope")
            return None

        containerd.refuse = refuse
        await containerd.start()
        publisher = Publisher(containerd.path, NAMESPACE, **FAST, refusals_before_drop=3)
        publisher.start()
        publisher.publish("/tasks/paused", task_pb2.TaskPaused(container_id="c1"))
        publisher.publish("/tasks/checkpointed", task_pb2.TaskCheckpointed(container_id="c1"))
        publisher.publish("/tasks/resumed", task_pb2.TaskResumed(container_id="c1"))
        assert await publisher.flush(20)
        assert containerd.of("c1") == ["/tasks/resumed"]
        assert containerd.attempts[("/tasks/paused", "c1")] == 3
        # InvalidArgument judges the envelope itself: no second try.
        assert containerd.attempts[("/tasks/checkpointed", "c1")] == 1
        assert publisher.dropped == 2
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_a_refused_exit_is_never_dropped_and_what_follows_it_waits(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        released = False

        def refuse(topic: str, container: str, attempt: int) -> Exception | None:
            if not released and (topic, container) == ("/tasks/exit", "c1"):
                return InvalidArgument("refused")
            if not released and (topic, container) == ("/tasks/oom", "c2"):
                return Internal("busy")
            return None

        containerd.refuse = refuse
        await containerd.start()
        publisher = Publisher(containerd.path, NAMESPACE, **FAST, refusals_before_drop=2)
        publisher.start()
        publisher.publish("/tasks/oom", task_pb2.TaskOOM(container_id="c2"))
        topics = lifecycle(publisher, "c1")
        other = lifecycle(publisher, "c3")
        # Many more refusals than would drop any other event; c1's delete has had as many
        # chances to overtake, had its lane not waited.
        await containerd.until(lambda: containerd.attempts.get(("/tasks/exit", "c1"), 0) >= 6
                    and containerd.attempts.get(("/tasks/oom", "c2"), 0) >= 6
                    and containerd.of("c3") == other)
        assert containerd.of("c1") == topics[:2]
        assert containerd.of("c2") == []
        released = True
        assert await publisher.flush(20)
        assert containerd.of("c1") == topics
        assert containerd.of("c2") == ["/tasks/oom"]
        assert publisher.dropped == 0
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_overflow_goes_to_the_spool_and_comes_back_in_order(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        spool = short_tmp / SPOOL_NAME
        publisher = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp),
                              max_queued=4, **FAST)
        publisher.start()
        expected = starts(publisher, "c1", 50)
        assert publisher.in_memory[0] <= 4
        assert publisher.pending == 50
        assert spool.stat().st_size > 0
        await containerd.start()
        # Published while the spool is being read back: still after everything before it.
        await containerd.until(lambda: len(containerd.accepted) >= 20)
        expected += lifecycle_pairs(publisher, "c1")
        assert publisher.in_memory[0] <= 4
        assert await publisher.flush(20)
        assert containerd.accepted == expected
        assert exec_ids(containerd) == [f"e{index}" for index in range(50)]
        assert spool.stat().st_size == 0  # emptied once read back
        assert publisher.dropped == 0
        await publisher.close()
        await containerd.stop()

    run(scenario)


def lifecycle_pairs(publisher: Publisher, container: str) -> list[tuple[str, str]]:
    return [(topic, container) for topic in lifecycle(publisher, container)]


def test_memory_holds_at_most_max_bytes(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        publisher = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp),
                              max_bytes=4096, **FAST)
        publisher.start()
        bundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/" + "b" * 1000
        for index in range(40):
            publisher.publish("/tasks/create",
                              task_pb2.TaskCreate(container_id=f"c{index}", bundle=bundle))
            assert publisher.in_memory[1] <= 4096
        assert publisher.in_memory[0] < 4
        assert publisher.pending == 40
        await containerd.start()
        assert await publisher.flush(20)
        assert containerd.accepted == [("/tasks/create", f"c{index}") for index in range(40)]
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_without_a_spool_overflow_drops_all_but_exits_and_ooms(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        # A spool directory that does not exist: as good as none, and publish() must not mind.
        publisher = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp / "gone"),
                              max_queued=3, **FAST)
        publisher.start()
        expected = starts(publisher, "c1", 3)
        starts(publisher, "c1", 5)  # beyond the bound: dropped
        publisher.publish("/tasks/oom", task_pb2.TaskOOM(container_id="c1"))
        publisher.publish("/tasks/exit", task_pb2.TaskExit(container_id="c1", id="c1"))
        assert publisher.dropped == 5
        assert publisher.pending == 5
        await containerd.start()
        assert await publisher.flush(20)
        assert containerd.accepted == [*expected, ("/tasks/oom", "c1"), ("/tasks/exit", "c1")]
        await publisher.close()
        await containerd.stop()

    run(scenario)


def test_undelivered_events_are_kept_for_the_next_publisher(short_tmp: Path) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        first = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp), max_queued=2,
                          **FAST)
        first.start()
        expected = lifecycle_pairs(first, "c1")  # two in memory, two in the spool
        await first.close(timeout=0)
        await containerd.start()
        second = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp), **FAST)
        assert second.pending == 4
        second.start()
        expected += lifecycle_pairs(second, "c2")
        assert await second.flush(20)
        assert containerd.accepted == expected
        await second.close()
        await containerd.stop()

    run(scenario)


def test_a_record_cut_off_by_a_crash_is_discarded_and_the_rest_replayed(
    short_tmp: Path,
) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        records = b""
        for topic, container in [("/tasks/exit", "c1"), ("/tasks/delete", "c1")]:
            event = task_pb2.TaskDelete(container_id=container)
            request = forward_pb2.ForwardRequest()
            request.envelope.timestamp.GetCurrentTime()
            request.envelope.namespace = NAMESPACE
            request.envelope.topic = topic
            request.envelope.event.type_url = event.DESCRIPTOR.full_name
            request.envelope.event.value = event.SerializeToString()
            data = request.SerializeToString()
            records += struct.pack(">I", len(data)) + data
        (short_tmp / SPOOL_NAME).write_bytes(records + struct.pack(">I", 500) + b"cut")
        await containerd.start()
        publisher = Publisher(containerd.path, NAMESPACE, spool_dir=str(short_tmp), **FAST)
        assert publisher.pending == 2
        publisher.start()
        assert await publisher.flush(20)
        assert containerd.accepted == [("/tasks/exit", "c1"), ("/tasks/delete", "c1")]
        await publisher.close()
        await containerd.stop()

    run(scenario)


class CrashingPublisher(Publisher):
    """Its sender dies of an unexpected error the first `crashes` times it looks for work."""

    def __init__(self, *args: Any, crashes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crashes = crashes

    def _next(self, now: float) -> Any:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("injected sender crash")
        return super()._next(now)


def test_a_crashed_sender_is_restarted_and_loses_nothing(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        containerd = FakeContainerd(str(short_tmp / "c.sock"))
        await containerd.start()
        publisher = CrashingPublisher(containerd.path, NAMESPACE, crashes=3, **FAST)
        publisher.start()
        topics = lifecycle(publisher, "c1")
        assert await publisher.flush(20)
        assert containerd.of("c1") == topics
        assert publisher.restarts == 3
        publisher.crashes = 1
        topics += lifecycle(publisher, "c1")
        assert await publisher.flush(20)
        assert containerd.of("c1") == topics
        assert publisher.restarts == 4
        await publisher.close()
        await containerd.stop()

    run(scenario)
    assert "event sender crashed" in caplog.text
    assert "injected sender crash" in caplog.text


def test_publish_never_raises_into_the_caller(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        publisher = Publisher(str(short_tmp / "c.sock"), NAMESPACE, **FAST)
        publisher.start()
        publisher.publish("/tasks/start", object())  # type: ignore[arg-type]
        assert publisher.pending == 0
        publisher.publish("/tasks/start", task_pb2.TaskStart(container_id="c1"))
        assert publisher.pending == 1
        await publisher.close(timeout=0)

    run(scenario)
    assert "cannot queue event /tasks/start" in caplog.text
