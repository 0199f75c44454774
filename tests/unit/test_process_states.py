"""Init and exec state machines (spec §3.4): what each state allows, refuses, and becomes.

The container is a recorder standing in for runc; only the transitions are under test here
(the real runc path is covered end to end).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from pyshim.errors import EngineError, FailedPrecondition, NotFound
from pyshim.errors import WrongState as Unknown  # containerd sees these as UNKNOWN
from pyshim.io import ProcessIO, StdioConfig
from pyshim.process import Container, ExecProcess, InitProcess, Status


class RecordingContainer:
    id = "c1"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.init: InitProcess | None = None

    async def runtime_start_init(self) -> None:
        self.calls.append("start")

    async def runtime_delete_init(self) -> None:
        self.calls.append("delete")

    async def runtime_kill(self, signal: int, all_processes: bool) -> None:
        self.calls.append(f"kill {signal} {all_processes}")

    async def runtime_pause(self) -> None:
        self.calls.append("pause")

    async def runtime_resume(self) -> None:
        self.calls.append("resume")

    async def runtime_start_exec(self, process: ExecProcess) -> None:
        self.calls.append(f"exec {process.id}")

    async def forget_exec(self, process: ExecProcess) -> None:
        self.calls.append(f"forget {process.id}")


def status(process: InitProcess | ExecProcess) -> Status:
    """Read through a call, so the type checker does not narrow across transitions."""
    return process.status


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def make_init() -> tuple[RecordingContainer, InitProcess]:
    container = RecordingContainer()
    init = InitProcess(cast(Container, container), "c1", StdioConfig(), ProcessIO())
    container.init = init
    return container, init


def make_exec() -> tuple[RecordingContainer, ExecProcess]:
    container, _ = make_init()
    process = ExecProcess(cast(Container, container), "e1", StdioConfig(), ProcessIO())
    return container, process


def refused(coroutine: Any, error: type[EngineError], text: str) -> None:
    with pytest.raises(error) as raised:
        run(coroutine)
    assert text in str(raised.value)


def test_init_full_lifecycle() -> None:
    container, init = make_init()
    assert status(init) is Status.CREATED
    run(init.state.start())
    assert status(init) is Status.RUNNING
    run(init.state.pause())
    assert status(init) is Status.PAUSED
    run(init.state.resume())
    assert status(init) is Status.RUNNING
    run(init.state.kill(9, True))
    init.state.exited()
    assert status(init) is Status.STOPPED
    run(init.state.delete())
    assert container.calls == ["start", "pause", "resume", "kill 9 True", "delete"]


def test_init_refusals_name_the_container() -> None:
    _, init = make_init()
    refused(init.state.pause(), Unknown, "container c1: cannot pause task in created state")
    refused(init.state.resume(), Unknown, "cannot resume a created process")
    run(init.state.start())
    refused(init.state.start(), Unknown, "container c1: cannot start a running process")
    refused(init.state.delete(), Unknown, "cannot delete a running process")
    refused(init.state.resume(), Unknown, "cannot resume a running process")
    run(init.state.pause())
    refused(init.state.pause(), Unknown, "cannot pause a paused container")
    refused(init.state.delete(), Unknown, "cannot delete a paused process")
    with pytest.raises(Unknown, match="cannot exec in a paused state"):
        init.state.check_exec()
    init.state.exited()
    with pytest.raises(Unknown, match="cannot exec in a stopped state"):
        init.state.check_exec()
    with pytest.raises(Unknown, match="cannot update a stopped container"):
        init.state.check_update()
    refused(init.state.start(), Unknown, "cannot start a stopped process")


def test_created_init_can_be_deleted_and_then_is_gone() -> None:
    container, init = make_init()
    run(init.state.delete())
    assert container.calls == ["delete"]
    refused(init.state.delete(), NotFound, "container c1: container not created")
    refused(init.state.kill(15, False), NotFound, "container not created")


def test_pause_failure_returns_to_running() -> None:
    container, init = make_init()
    run(init.state.start())

    async def failing_pause() -> None:
        assert status(init) is Status.PAUSING  # State reports PAUSING while runc runs
        raise Unknown("runc pause failed")

    container.runtime_pause = failing_pause  # type: ignore[method-assign]
    refused(init.state.pause(), Unknown, "runc pause failed")
    assert status(init) is Status.RUNNING


def test_exec_lifecycle_and_refusals() -> None:
    container, process = make_exec()
    refused(process.state.kill(9, False), FailedPrecondition,
            "container c1 exec e1: process not created")
    run(process.state.start())
    assert status(process) is Status.RUNNING
    refused(process.state.delete(), Unknown, "container c1 exec e1: cannot delete a running")
    process.reaped = True
    refused(process.state.kill(9, False), NotFound, "process already finished")
    process.state.exited()
    assert status(process) is Status.STOPPED
    run(process.state.delete())
    refused(process.state.start(), NotFound, "process does not exist e1")
    assert container.calls == ["exec e1", "forget e1"]


def test_exec_reports_paused_while_its_container_is() -> None:
    container, process = make_exec()
    run(process.state.start())
    assert container.init is not None
    run(container.init.state.start())
    run(container.init.state.pause())
    assert status(process) is Status.PAUSED


def test_never_started_exec_delete_releases_waiters() -> None:
    _, process = make_exec()

    async def scenario() -> None:
        waiter = asyncio.ensure_future(process.wait())
        await asyncio.sleep(0)
        process.release_waiters(NotFound("deleted before it exited"))
        with pytest.raises(NotFound):
            await waiter

    run(scenario())


def test_wait_returns_the_recorded_exit() -> None:
    _, init = make_init()

    async def scenario() -> tuple[int, int | None]:
        waiter = asyncio.ensure_future(init.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        init.record_exit(137, 1_700_000_000_000_000_000)
        return await waiter

    assert run(scenario()) == (137, 1_700_000_000_000_000_000)


def test_until_idle_waits_for_an_operation_whose_caller_gave_up() -> None:
    # A Resume whose caller's deadline passed goes on; a State asked meanwhile must wait for
    # it (as the Go shim's Status takes the process lock), not say PAUSED while runc resumes.
    container, init = make_init()
    run(init.state.start())
    run(init.state.pause())
    resuming = asyncio.Event()

    async def slow_resume() -> None:
        resuming.set()
        await asyncio.sleep(0.05)
        container.calls.append("resume")

    container.runtime_resume = slow_resume  # type: ignore[method-assign]

    async def scenario() -> Status:
        caller = asyncio.ensure_future(init.operate(init.state.resume))
        await resuming.wait()
        caller.cancel()  # the caller gives up; the resume goes on
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert status(init) is Status.PAUSED  # what State would have said before
        await init.until_idle(bound=5.0)
        return status(init)

    assert run(scenario()) is Status.RUNNING
    assert container.calls == ["start", "pause", "resume"]


def test_until_idle_gives_up_after_its_bound_on_a_hung_operation() -> None:
    container, init = make_init()
    run(init.state.start())
    release, started = asyncio.Event(), asyncio.Event()

    async def hung_pause() -> None:
        started.set()
        await release.wait()

    container.runtime_pause = hung_pause  # type: ignore[method-assign]

    async def scenario() -> tuple[Status, bool]:
        pausing = asyncio.ensure_future(init.operate(init.state.pause))
        await started.wait()
        await init.until_idle(bound=0.01)  # returns although the pause is still in flight
        seen = (status(init), pausing.done())
        release.set()
        await pausing
        return seen

    assert run(scenario()) == (Status.PAUSING, False)
    assert status(init) is Status.PAUSED


def test_until_idle_returns_at_once_with_nothing_in_flight() -> None:
    _, init = make_init()

    waiting = init.until_idle(bound=3600)
    with pytest.raises(StopIteration):  # done at its first step: it never suspends
        waiting.send(None)
