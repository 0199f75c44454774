"""The Task service fuzzed (issue 11): random sequences of valid and invalid calls, with random
exec ids and deadlines, straight on the socket of a pyshim shim (as containerd would send
them, and as a confused or hostile client could), and after every sequence the shim still
answers and tells the truth.

One container made by ``ctr run -d ... sleep 1000`` gives the shim; hypothesis then draws
sequences of Exec/Start (also as a pair on one id)/Kill/Delete/State/Pause/Resume/Wait/Pids/
CloseIO/ResizePty on it with

* exec ids from a pool of valid ones (``e1``, a 76-character id, the container id itself,
  which is a normal exec id) and invalid ones (``../x``, ``x/y``, ``..``, 77 characters, a
  newline, non-ASCII, ...); ``""`` is the init;
* client deadlines from 1 ms to 2 s (so many calls are abandoned while the shim works).

After each sequence (checked on a new connection):

* the shim answers State of the init within :data:`STATE_BOUND` (it never wedges);
* the init's State agrees with ``runc state`` (created/running/paused/stopped), pid included;
* every valid exec id's State is NOT_FOUND or consistent: a RUNNING exec's pid is alive and in
  Pids, a STOPPED one has an exit time and a status its command or a signal explains, PAUSED
  only while the container is paused; an invalid id is never found and never accepted by Exec;
* nothing appeared next to the bundle (no path made of an invalid id).

Then every exec is killed and deleted; an init that was SIGKILLed is replaced by a new
container. Deleting the init through the socket is left out: containerd owns that. The
number of sequences run is printed and recorded as the ``fuzz_sequences`` property.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types.task import task_pb2
from pyshim.ttrpc import Client, Code, RPCError
from tests.e2e.conftest import (
    PYSHIM_RUNTIME,
    TASK,
    assert_no_leftovers,
    bundle_dir,
    call_shim,
    remove_container,
    shim_address,
    unique_id,
)
from tests.e2e.containerd import DEFAULT_RUNC_ROOT, PrivateContainerd

#: The type URL containerd gives an exec's process spec.
PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
#: runc's state directory for the ``default`` namespace (pyshim's default root).
RUNC_ROOT = DEFAULT_RUNC_ROOT / "default"

#: Sequences hypothesis runs, with MIN_CALLS to MAX_CALLS calls each (a Wait may use its whole
#: 2 s deadline): about a minute on two shared cores, well below three.
MAX_SEQUENCES = 300
MIN_CALLS = 3
MAX_CALLS = 15
#: State must answer within this after a sequence. A State is answered from memory or one
#: ``runc state`` (milliseconds); a wedged shim never answers. Generous for a loaded machine.
STATE_BOUND = 10.0
#: How long the init's State and ``runc state`` may take to agree after a sequence: a Pause
#: or a Kill whose caller gave up may still be running in the shim when the sequence ends.
SETTLE_BOUND = 10.0
#: Deadline of the clean-up calls (Kill, Wait, Delete of execs) after a sequence.
CLEANUP_TIMEOUT = 30.0

#: Stands for the container id itself in the exec id pool (a valid exec id).
CONTAINER_ID = "<container id>"
INIT = ""
VALID_EXEC_IDS = ("e1", "e2", "e-3.x_y", "a" * 76, CONTAINER_ID)
INVALID_EXEC_IDS = ("../x", "x/y", "..", ".", "-e", "e1\n", "é", "a" * 77, "e1 ", "/abs")

#: Commands an exec runs, and the exit statuses each can end with by itself.
COMMANDS: dict[str, tuple[list[str], set[int]]] = {
    "sleep": (["/bin/sleep", "1000"], set()),
    "true": (["/bin/true"], {0}),
    "exit3": (["/bin/sh", "-c", "exit 3"], {3}),
}
SIGNALS = (0, 9, 15, 18, 19)  # none, SIGKILL, SIGTERM, SIGCONT, SIGSTOP
#: Exit statuses of a stopped exec: its command's own, or 128 + a signal the fuzz sends.
EXPLAINED_STATUSES = {code for _, codes in COMMANDS.values() for code in codes} | {
    128 + 9, 128 + 15}

RUNC_STATUS = {
    "created": task_pb2.CREATED,
    "running": task_pb2.RUNNING,
    "paused": task_pb2.PAUSED,
    "stopped": task_pb2.STOPPED,
}


@dataclass(frozen=True)
class Call:
    method: str
    exec_id: str
    deadline: float
    signal: int = 0
    command: str = "sleep"
    width: int = 0
    height: int = 0


#: Drawn with repetitions as weights: mostly e1 (so that an Exec, a Start, a Kill, a Wait and
#: a Delete often meet the same exec), the init, then everything else once.
EXEC_ID_POOL = ("e1",) * 12 + (INIT,) * 3 + ("e2",) * 3 + VALID_EXEC_IDS[2:] + INVALID_EXEC_IDS
exec_ids = st.sampled_from(EXEC_ID_POOL)
deadlines = st.floats(min_value=0.001, max_value=2.0)


def calls_of(method: str, ids: st.SearchStrategy[str] = exec_ids) -> st.SearchStrategy[Call]:
    return st.builds(Call, method=st.just(method), exec_id=ids, deadline=deadlines)


#: Each method's strategy for one call.
CALL_STRATEGIES: dict[str, st.SearchStrategy[Call]] = {
    "Exec": st.builds(Call, method=st.just("Exec"), exec_id=exec_ids, deadline=deadlines,
                      command=st.sampled_from(sorted(COMMANDS))),
    "ExecStart": st.builds(Call, method=st.just("ExecStart"), exec_id=exec_ids,
                           deadline=deadlines, command=st.sampled_from(sorted(COMMANDS))),
    "Start": calls_of("Start"),
    "Kill": st.builds(Call, method=st.just("Kill"), exec_id=exec_ids, deadline=deadlines,
                      signal=st.sampled_from(SIGNALS)),
    "Delete": calls_of("Delete", st.sampled_from(tuple(i for i in EXEC_ID_POOL if i != INIT))),
    "State": calls_of("State"),
    "Wait": calls_of("Wait"),
    "Pids": calls_of("Pids", st.just(INIT)),
    "CloseIO": calls_of("CloseIO"),
    "ResizePty": st.builds(Call, method=st.just("ResizePty"), exec_id=exec_ids,
                           deadline=deadlines, width=st.integers(0, 500),
                           height=st.integers(0, 500)),
    "Pause": calls_of("Pause", st.just(INIT)),
    "Resume": calls_of("Resume", st.just(INIT)),
}
#: Methods drawn with repetitions as weights: the calls that change something most often;
#: Pause rarely, since a paused container refuses most of the rest.
METHOD_POOL = (("Exec",) * 2 + ("ExecStart",) * 3 + ("Start",) * 3 + ("Kill",) * 3 + ("Delete",) * 2
               + ("State",) * 2 + ("Wait",) * 2 + ("Resume",) * 2
               + ("Pids", "CloseIO", "ResizePty", "Pause"))
calls = st.sampled_from(METHOD_POOL).flatmap(CALL_STRATEGIES.__getitem__)


@dataclass
class Target:
    """The container the sequences run against (replaced when a sequence killed its init)."""

    containerd: PrivateContainerd
    rootfs: Path
    container_id: str = ""
    address: str = ""
    process: dict[str, Any] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    sequences: int = 0
    replaced: int = 0
    #: How each call ended: (method, "OK" or the status code's name) -> count.
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)

    def start(self) -> None:
        self.container_id = unique_id("fuzz")
        self.ids.append(self.container_id)
        self.containerd.ctr("run", "-d", "--runtime", PYSHIM_RUNTIME, "--rootfs",
                            str(self.rootfs), self.container_id, "/bin/sleep", "1000")
        self.address = shim_address(self.containerd, self.container_id)
        config = json.loads((bundle(self) / "config.json").read_text())
        self.process = config["process"]

    def exec_id(self, name: str) -> str:
        return self.container_id if name == CONTAINER_ID else name

    def remove(self) -> None:
        remove_container(self.containerd, self.container_id)


def bundle(target: Target) -> Path:
    return bundle_dir(target.containerd, target.container_id)


def request_for(target: Target, call: Call) -> tuple[Message, type[Message]]:
    cid, exec_id = target.container_id, target.exec_id(call.exec_id)
    match call.method:
        case "Exec":
            process = {**target.process, "args": COMMANDS[call.command][0], "terminal": False}
            spec = any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=json.dumps(process).encode())
            return shim_pb2.ExecProcessRequest(id=cid, exec_id=exec_id, spec=spec), empty_pb2.Empty
        case "Start":
            return shim_pb2.StartRequest(id=cid, exec_id=exec_id), shim_pb2.StartResponse
        case "Kill":
            request = shim_pb2.KillRequest(id=cid, exec_id=exec_id, signal=call.signal)
            return request, empty_pb2.Empty
        case "Delete":
            return shim_pb2.DeleteRequest(id=cid, exec_id=exec_id), shim_pb2.DeleteResponse
        case "State":
            return shim_pb2.StateRequest(id=cid, exec_id=exec_id), shim_pb2.StateResponse
        case "Wait":
            return shim_pb2.WaitRequest(id=cid, exec_id=exec_id), shim_pb2.WaitResponse
        case "Pids":
            return shim_pb2.PidsRequest(id=cid), shim_pb2.PidsResponse
        case "CloseIO":
            return shim_pb2.CloseIORequest(id=cid, exec_id=exec_id, stdin=True), empty_pb2.Empty
        case "ResizePty":
            resize = shim_pb2.ResizePtyRequest(id=cid, exec_id=exec_id, width=call.width,
                                               height=call.height)
            return resize, empty_pb2.Empty
        case "Pause":
            return shim_pb2.PauseRequest(id=cid), empty_pb2.Empty
        case "Resume":
            return shim_pb2.ResumeRequest(id=cid), empty_pb2.Empty
    raise AssertionError(f"unknown method {call.method}")


def server_code(error: RPCError) -> int:
    """The status code of a failed call (DEADLINE_EXCEEDED also when the caller's deadline
    ran out first)."""
    return error.received_code if error.received_code is not None else int(error.code)


async def run_sequence(client: Client, target: Target, sequence: list[Call]) -> set[str]:
    """Send the calls; return the valid exec ids an Exec was accepted for."""
    created: set[str] = set()
    for drawn in sequence:
        for call in expand(drawn):
            await send(client, target, call, created)
    return created


def expand(call: Call) -> list[Call]:
    """An ExecStart is an Exec then a Start of the same id (each with the deadline)."""
    if call.method != "ExecStart":
        return [call]
    return [replace(call, method="Exec"), replace(call, method="Start")]


async def send(client: Client, target: Target, call: Call, created: set[str]) -> None:
    """One call; an Exec with an invalid id must fail, with INVALID_ARGUMENT unless the
    caller's deadline ran out first."""
    request, reply_type = request_for(target, call)
    try:
        await client.call(TASK, call.method, request, reply_type, timeout=call.deadline)
    except RPCError as error:
        target.outcomes[call.method, Code(server_code(error)).name] += 1
        if call.method == "Exec" and call.exec_id in INVALID_EXEC_IDS:
            assert server_code(error) in (Code.INVALID_ARGUMENT,
                                          Code.DEADLINE_EXCEEDED), (call, error)
        return
    target.outcomes[call.method, "OK"] += 1
    if call.method == "Exec":
        assert call.exec_id not in (INIT, *INVALID_EXEC_IDS), f"accepted: {call}"
        created.add(call.exec_id)


async def state(client: Client, target: Target, exec_id: str) -> shim_pb2.StateResponse:
    request = shim_pb2.StateRequest(id=target.container_id, exec_id=target.exec_id(exec_id))
    reply = await client.call(TASK, "State", request, shim_pb2.StateResponse,
                              timeout=STATE_BOUND)
    assert isinstance(reply, shim_pb2.StateResponse)
    return reply


def runc_state(container_id: str) -> dict[str, Any]:
    result = subprocess.run(["runc", "--root", str(RUNC_ROOT), "state", container_id],
                            capture_output=True, text=True, timeout=30, check=True)
    document = json.loads(result.stdout)
    assert isinstance(document, dict)
    return document


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def settle(description: str, check: Callable[[], Awaitable[None]]) -> None:
    """Await ``check()`` (an AssertionError while it does not hold) until it holds, at most
    SETTLE_BOUND seconds; then the last AssertionError is raised."""
    deadline = time.monotonic() + SETTLE_BOUND
    while True:
        try:
            await check()
            return
        except AssertionError as error:
            if time.monotonic() > deadline:
                raise AssertionError(f"{description}: {error}") from None
        await asyncio.sleep(0.05)


async def check_consistency(client: Client, target: Target) -> int:
    """The invariants after a sequence (see the module docstring); the init's status."""
    cid = target.container_id
    init_status: list[int] = []

    async def init_agrees() -> None:
        reply = await state(client, target, INIT)
        runc = runc_state(cid)
        assert reply.status == RUNC_STATUS[runc["status"]], (reply, runc["status"])
        if reply.status != task_pb2.STOPPED:
            assert reply.pid == runc["pid"], (reply.pid, runc["pid"])
        init_status[:] = [reply.status]

    await settle("the init's State agrees with runc state", init_agrees)
    [status] = init_status

    async def execs_consistent() -> None:
        pids_reply = await client.call(TASK, "Pids", shim_pb2.PidsRequest(id=cid),
                                       shim_pb2.PidsResponse, timeout=STATE_BOUND)
        assert isinstance(pids_reply, shim_pb2.PidsResponse)
        listed = {process.pid for process in pids_reply.processes}
        for exec_id in VALID_EXEC_IDS:
            try:
                reply = await state(client, target, exec_id)
            except RPCError as error:
                assert server_code(error) == Code.NOT_FOUND, (exec_id, error)
                continue
            assert reply.id == target.exec_id(exec_id), reply  # runc-v2 puts the exec id there
            if reply.status == task_pb2.RUNNING:
                assert reply.pid > 0 and alive(reply.pid), (exec_id, reply)
                assert reply.pid in listed, (exec_id, reply.pid, listed)
            elif reply.status == task_pb2.STOPPED:
                assert reply.exited_at.seconds > 0, (exec_id, reply)
                assert reply.exit_status in EXPLAINED_STATUSES, (exec_id, reply)
            elif reply.status == task_pb2.PAUSED:
                assert status == task_pb2.PAUSED, (exec_id, reply)
            else:
                assert reply.status == task_pb2.CREATED, (exec_id, reply)
        for exec_id in INVALID_EXEC_IDS:
            try:
                reply = await state(client, target, exec_id)
            except RPCError as error:
                assert server_code(error) in (Code.NOT_FOUND, Code.INVALID_ARGUMENT), (
                    exec_id, error)
            else:
                raise AssertionError(f"State of invalid exec id {exec_id!r}: {reply}")

    await settle("every exec's State is consistent", execs_consistent)
    return status


async def clean_up_execs(client: Client, target: Target, init_status: int) -> None:
    """Resume a paused container, then kill (SIGKILL), wait for and delete every exec."""
    cid = target.container_id
    if init_status == task_pb2.PAUSED:
        await client.call(TASK, "Resume", shim_pb2.ResumeRequest(id=cid), empty_pb2.Empty,
                          timeout=CLEANUP_TIMEOUT)
    for name in VALID_EXEC_IDS:
        await settle(f"exec {target.exec_id(name)!r} killed and deleted",
                     functools.partial(remove_exec_once, client, target, name))


async def remove_exec_once(client: Client, target: Target, name: str) -> None:
    """One attempt at removing an exec: returns once it is not found, raises AssertionError to
    be tried again. An exec reads CREATED while a Start whose caller gave up still runs in the
    shim, and refuses its Delete once that Start is through: the next attempt kills it."""
    cid, exec_id = target.container_id, target.exec_id(name)
    try:
        reply = await state(client, target, name)
    except RPCError as error:
        assert server_code(error) == Code.NOT_FOUND, (name, error)
        return
    try:
        if reply.status in (task_pb2.RUNNING, task_pb2.PAUSED):
            await client.call(TASK, "Kill", shim_pb2.KillRequest(id=cid, exec_id=exec_id,
                                                                 signal=9),
                              empty_pb2.Empty, timeout=CLEANUP_TIMEOUT)
            await client.call(TASK, "Wait", shim_pb2.WaitRequest(id=cid, exec_id=exec_id),
                              shim_pb2.WaitResponse, timeout=CLEANUP_TIMEOUT)
        await client.call(TASK, "Delete", shim_pb2.DeleteRequest(id=cid, exec_id=exec_id),
                          shim_pb2.DeleteResponse, timeout=CLEANUP_TIMEOUT)
    except RPCError as error:
        raise AssertionError(f"{exec_id!r} ({reply.status}): {error!r}") from None
    raise AssertionError(f"{exec_id!r} deleted; not yet seen gone")


def check_nothing_next_to_the_bundle(target: Target) -> None:
    """Only bundles of our containers in the namespace's directory (an invalid exec id used
    as a path would leave files there, or elsewhere next to the bundle)."""
    namespace_dir = bundle(target).parent
    assert set(os.listdir(namespace_dir)) <= set(target.ids), os.listdir(namespace_dir)


def test_random_call_sequences_never_wedge_or_confuse_the_shim(
    shim_containerd: PrivateContainerd, busybox_rootfs: Path,
    record_property: Callable[[str, object], None],
) -> None:
    target = Target(shim_containerd, busybox_rootfs)
    target.start()

    # No shrinking: every sequence costs seconds of real containers, so a shrink could run
    # for many minutes; the failing sequence is printed as drawn.
    @settings(max_examples=MAX_SEQUENCES, deadline=None, database=None,
              phases=(Phase.explicit, Phase.generate), print_blob=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(calls, min_size=MIN_CALLS, max_size=MAX_CALLS))
    def sequences(sequence: list[Call]) -> None:
        target.sequences += 1

        async def scenario(client: Client) -> None:
            await run_sequence(client, target, sequence)

        call_shim(target.address, scenario)

        async def check(client: Client) -> int:
            init_status = await check_consistency(client, target)
            await clean_up_execs(client, target, init_status)
            return init_status

        init_status = call_shim(target.address, check)
        check_nothing_next_to_the_bundle(target)
        if init_status == task_pb2.STOPPED:
            target.remove()
            target.replaced += 1
            target.start()

    try:
        sequences()
    finally:
        print(f"fuzz: {target.sequences} sequences, init replaced {target.replaced} times; "
              f"calls: {sorted(target.outcomes.items())}")
        record_property("fuzz_sequences", target.sequences)
        record_property("fuzz_inits_replaced", target.replaced)
        # A failed sequence may leave the container paused: thaw it, so SIGKILL ends it.
        shim_containerd.ctr("task", "resume", target.container_id, check=False)
        target.remove()
    assert_no_leftovers(shim_containerd, target.ids)
