"""The event publisher against a real containerd 1.6: an event containerd refuses is dropped
without holding up the rest, the overflow spool reads back in order, and events published
while containerd is stopped are delivered once it is back (spec §4.1, §4.4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from pyshim.events import Publisher
from pyshim.protos.containerd.events import task_pb2
from tests.e2e.containerd import PrivateContainerd, parse_event_line

NAMESPACE = "pyshim-e2e"
LIFECYCLE = ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


def lifecycle(publisher: Publisher, container: str) -> None:
    publisher.publish("/tasks/create", task_pb2.TaskCreate(container_id=container, pid=9))
    publisher.publish("/tasks/start", task_pb2.TaskStart(container_id=container, pid=9))
    publisher.publish("/tasks/exit", task_pb2.TaskExit(container_id=container, id=container,
                                                       pid=9, exit_status=1))
    publisher.publish("/tasks/delete", task_pb2.TaskDelete(container_id=container, pid=9))


def test_refused_event_spool_and_containerd_restart(
    containerd: PrivateContainerd, tmp_path: Path
) -> None:
    async def scenario() -> Publisher:
        loop = asyncio.get_running_loop()
        publisher = Publisher(f"unix://{containerd.ttrpc_address}", NAMESPACE,
                              spool_dir=str(tmp_path), max_queued=2, retry_first=0.05,
                              retry_max=0.5)
        publisher.start()
        with containerd.subscribe_events() as events:
            # containerd refuses a topic with a `?` in it (InvalidArgument): dropped at once.
            publisher.publish("/tasks/?", task_pb2.TaskOOM(container_id="c1"))
            lifecycle(publisher, "c1")  # two in memory, the rest through the spool
            assert await publisher.flush(20)
            await loop.run_in_executor(None, lambda: events.wait_for(
                lambda line: '"container_id":"c1"' in line and "/tasks/delete" in line))
            lines = [parse_event_line(line) for line in events.lines()]
        assert [line.topic for line in lines if line.namespace == NAMESPACE] == LIFECYCLE
        assert (publisher.sent, publisher.dropped) == (4, 1)
        await loop.run_in_executor(None, containerd.stop_daemon)
        lifecycle(publisher, "c2")
        await loop.run_in_executor(None, containerd.start)
        assert await publisher.flush(60)
        await publisher.close()
        return publisher

    publisher = uvloop.run(scenario())
    assert (publisher.sent, publisher.dropped, publisher.pending) == (8, 1, 0)
