"""``bench.suite``'s timed figures per configuration: one latency round (``ctr run -d``,
``ctr task exec``, exit detection, ``ctr run --rm``) and one burst (many starts in sequence or
from several threads)."""

from __future__ import annotations

import os
import signal
import time

from bench.common import wait_for_no_shims
from bench.suite_ctr import Session, timed_ms
from bench.suite_env import BenchError, Config, check_origin, daemons_of
from bench.suite_events import TimedEvents
from tests.e2e.conftest import task_list
from tests.e2e.containerd import CtrError


def latency_round(session: Session, events: TimedEvents, config: Config, index: int) -> dict[
        str, float]:
    """run_d_ms, exec_ms, exit_ms and run_rm_ms of one round; nothing is left running.

    exit_ms: from just before ``kill(SIGKILL)`` of the container's init to the moment the
    ``ctr events`` subscriber read that task's ``/tasks/exit`` line.
    """
    containerd = session.containerd
    step = f"latency round {index}: {config.name}"
    figures: dict[str, float] = {}
    container_id = session.new_id(config, f"l{index}")
    try:
        figures["run_d_ms"] = session.start_sleeper(config, container_id, step)
        check_origin(containerd, config, daemons_of(containerd, [container_id]))
        figures["exec_ms"] = timed_ms(lambda: session.ctr(
            f"{step}: exec in {container_id}",
            "task", "exec", "--exec-id", "e", container_id, "/bin/true"))
        try:
            init_pid = task_list(containerd)[container_id][0]
        except (CtrError, KeyError) as error:
            raise BenchError(f"{step}: init pid of {container_id}: {error!r}") from None
        since = events.mark()
        begin = time.perf_counter()
        os.kill(init_pid, signal.SIGKILL)
        try:
            seen, _ = events.wait("/tasks/exit", {"container_id": container_id, "pid": init_pid},
                                  since)
        except (TimeoutError, RuntimeError) as error:
            raise BenchError(f"{step}: exit of {container_id}: {error}") from None
        figures["exit_ms"] = (seen - begin) * 1000
    finally:
        session.remove([container_id], step)
    rm_id = session.new_id(config, f"r{index}")
    figures["run_rm_ms"] = timed_ms(lambda: session.ctr(
        f"{step}: run --rm {rm_id}", *session.run_argv(config, rm=True), rm_id, "/bin/true"))
    try:
        wait_for_no_shims(containerd)
    except RuntimeError as error:
        raise BenchError(f"{step}: {error}") from None
    return figures


def burst(session: Session, config: Config, count: int, workers: int, index: int) -> float:
    """Wall seconds to start ``count`` sleepers, ``workers`` at a time (each a ``ctr run -d``);
    then they are deleted (untimed)."""
    mode = "sequence" if workers <= 1 else f"{workers} parallel"
    step = f"burst round {index}: {count} starts in {mode}: {config.name}"
    ids = [session.new_id(config, f"b{index}w{workers}") for _ in range(count)]
    try:
        seconds = session.start_many(config, ids, step, workers)
        check_origin(session.containerd, config, daemons_of(session.containerd, ids))
        return seconds
    finally:
        session.remove(ids, step)
