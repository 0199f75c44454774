"""The task events a shim publishes (spec §4.3, §4.4), as ``ctr events`` shows them: the topic
sequence of each lifecycle, the order guarantees, and the ``/tasks/exit`` payload. Run for each
runtime under test (``io.containerd.runc.v2`` too with ``PYSHIM_E2E_REFERENCE=1``).

Events are published asynchronously: a ``ctr`` command may return before the event it caused
reaches the subscriber, so every check waits for the last event it expects first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import (
    assert_no_leftovers,
    bundle_dir,
    remove_container,
    task_list,
    unique_id,
    wait_for_status,
)
from tests.e2e.containerd import EventLine, EventSubscription, PrivateContainerd, parse_event_line
from tests.e2e.containerd_versions import (
    containerd_behaviour,
    event_timestamp_form,
    parse_event_timestamp,
)


def task_events(events: EventSubscription, container_id: str) -> list[EventLine]:
    """The ``/tasks/*`` events of one container received so far, in order."""
    found = []
    for line in events.lines():
        parsed = parse_event_line(line)
        if (parsed.topic.startswith("/tasks/") and parsed.event is not None
                and parsed.event.get("container_id") == container_id):
            found.append(parsed)
    return found


def wait_for_event(
    events: EventSubscription, topic: str, container_id: str, **fields: Any
) -> EventLine:
    """The first event with this topic for the container whose payload has ``fields``."""

    def matches(line: str) -> bool:
        parsed = parse_event_line(line)
        event = parsed.event or {}
        return (parsed.topic == topic and event.get("container_id") == container_id
                and all(event.get(key) == value for key, value in fields.items()))

    return parse_event_line(events.wait_for(matches, timeout=30))


def describe(lines: list[EventLine]) -> list[tuple[str, Any]]:
    return [(line.topic, line.event) for line in lines]


def assert_timestamp(value: Any) -> None:
    """``exited_at`` in the form the running containerd prints (RFC 3339 on 1.6, a
    ``{"seconds", "nanos"}`` object on 1.7), and a real exit time."""
    assert event_timestamp_form(value) == containerd_behaviour().event_timestamp_form, value
    assert parse_event_timestamp(value).year >= 2020, f"exited_at {value} is not a real exit time"


def test_run_rm_publishes_create_start_exit_delete(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ev-run")
    with shim_containerd.subscribe_events() as events:
        result = shim_containerd.ctr("run", "--rm", "--runtime", runtime,
                                     "--rootfs", str(busybox_rootfs), cid,
                                     "/bin/sh", "-c", "exit 3", check=False)
        assert result.returncode == 3, result.stderr
        wait_for_event(events, "/tasks/delete", cid)
        seen = task_events(events, cid)
    assert [line.topic for line in seen] == [
        "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"
    ], describe(seen)
    create, start, exit_, delete = (line.event or {} for line in seen)
    pid = create["pid"]
    assert isinstance(pid, int) and pid > 0
    assert create["bundle"] == str(bundle_dir(shim_containerd, cid))
    assert start == {"container_id": cid, "pid": pid}
    assert exit_["id"] == cid  # the init's exit names the container (CRI keys on it)
    assert (exit_["container_id"], exit_["pid"], exit_["exit_status"]) == (cid, pid, 3)
    assert_timestamp(exit_["exited_at"])
    assert set(exit_) == {"container_id", "id", "pid", "exit_status", "exited_at"}
    # The delete repeats the init's pid, status and exit time.
    assert delete["container_id"] == cid
    assert (delete["pid"], delete["exit_status"], delete["exited_at"]) == (
        pid, 3, exit_["exited_at"]
    )
    assert all(line.namespace == "default" for line in seen)
    assert_no_leftovers(shim_containerd, [cid])


def test_exit_payload_of_a_killed_init(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ev-kill")
    try:
        with shim_containerd.subscribe_events() as events:
            shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs",
                                str(busybox_rootfs), cid, "/bin/sleep", "1000")
            pid = task_list(shim_containerd)[cid][0]
            shim_containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
            exit_ = wait_for_event(events, "/tasks/exit", cid).event or {}
            wait_for_status(shim_containerd, cid, "STOPPED")
            shim_containerd.ctr("task", "delete", cid)
            delete = wait_for_event(events, "/tasks/delete", cid).event or {}
            seen = task_events(events, cid)
        assert [line.topic for line in seen] == [
            "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"
        ], describe(seen)
        assert exit_["container_id"] == exit_["id"] == cid
        assert (exit_["pid"], exit_["exit_status"]) == (pid, 137)
        assert_timestamp(exit_["exited_at"])
        assert (delete["pid"], delete["exit_status"], delete["exited_at"]) == (
            pid, 137, exit_["exited_at"]
        )
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_exec_publishes_added_started_exit(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ev-exec")
    try:
        shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs",
                            str(busybox_rootfs), cid, "/bin/sleep", "1000")
        init_pid = task_list(shim_containerd)[cid][0]
        with shim_containerd.subscribe_events() as events:
            result = shim_containerd.ctr("task", "exec", "--exec-id", "e1", cid,
                                         "/bin/sh", "-c", "exit 5", check=False)
            assert result.returncode == 5, result.stderr
            wait_for_event(events, "/tasks/exit", cid, id="e1")
            seen = task_events(events, cid)
        assert [line.topic for line in seen] == [
            "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"
        ], describe(seen)
        added, started, exit_ = (line.event or {} for line in seen)
        assert added == {"container_id": cid, "exec_id": "e1"}
        assert started["container_id"] == cid and started["exec_id"] == "e1"
        exec_pid = started["pid"]
        assert isinstance(exec_pid, int) and exec_pid > 0 and exec_pid != init_pid
        assert (exit_["container_id"], exit_["id"], exit_["pid"], exit_["exit_status"]) == (
            cid, "e1", exec_pid, 5
        )
        assert_timestamp(exit_["exited_at"])
        assert task_list(shim_containerd)[cid] == (init_pid, "RUNNING")
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_pause_resume_publish_paused_then_resumed(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("ev-pause")
    try:
        shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs",
                            str(busybox_rootfs), cid, "/bin/sleep", "1000")
        with shim_containerd.subscribe_events() as events:
            shim_containerd.ctr("task", "pause", cid)
            shim_containerd.ctr("task", "resume", cid)
            wait_for_event(events, "/tasks/resumed", cid)
            seen = task_events(events, cid)
        assert describe(seen) == [
            ("/tasks/paused", {"container_id": cid}),
            ("/tasks/resumed", {"container_id": cid}),
        ]
        shim_containerd.ctr("task", "rm", "--force", cid)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])


def test_exec_exits_are_published_before_the_init_exit(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """The container dies (init SIGKILLed) with two execs running: their exits come first
    (spec §4.4 rule 6), then the init's, then its delete."""
    cid = unique_id("ev-order")
    try:
        shim_containerd.ctr("run", "-d", "--runtime", runtime, "--rootfs",
                            str(busybox_rootfs), cid, "/bin/sleep", "1000")
        for exec_id in ("bg1", "bg2"):
            shim_containerd.ctr("task", "exec", "--detach", "--exec-id", exec_id, cid,
                                "/bin/sleep", "1000")
        with shim_containerd.subscribe_events() as events:
            shim_containerd.ctr("task", "kill", "--signal", "SIGKILL", cid)
            wait_for_event(events, "/tasks/exit", cid, id=cid)
            wait_for_status(shim_containerd, cid, "STOPPED")
            shim_containerd.ctr("task", "delete", cid)
            wait_for_event(events, "/tasks/delete", cid)
            seen = task_events(events, cid)
        topics_ids = [(line.topic, (line.event or {}).get("id")) for line in seen]
        assert sorted(topics_ids[:2]) == [("/tasks/exit", "bg1"), ("/tasks/exit", "bg2")], (
            describe(seen)
        )
        assert [topic for topic, _ in topics_ids[2:]] == ["/tasks/exit", "/tasks/delete"], (
            describe(seen)
        )
        assert topics_ids[2] == ("/tasks/exit", cid)
        assert all((line.event or {}).get("exit_status") == 137 for line in seen)
        shim_containerd.ctr("container", "rm", cid)
    finally:
        remove_container(shim_containerd, cid)
    assert_no_leftovers(shim_containerd, [cid])
