"""``bench.suite``'s idle-wakeup figure: one idle container per configuration (all at once, in
one window), and what its shim process(es) did meanwhile: CPU time (``/proc/PID/stat``
utime + stime, every thread) and context switches (``voluntary_ctxt_switches`` +
``nonvoluntary_ctxt_switches`` of ``/proc/PID/task/*/status``, every thread). An idle shim
should do nothing at all; the Go shim's runtime wakes up every 30 s or so.

The shim processes are the daemon and its helpers, never the container's processes; pyshim's
fork-server (shared by every daemon of the node) is measured on its own, for the notes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench.lifecycle import container_pids, shim_tree_pids
from bench.suite_ctr import Session
from bench.suite_env import CONFIGS, BenchError, Config, check_origin, daemons_of, forkservers
from tests.e2e.conftest import task_list

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Activity:
    """CPU milliseconds and context switches of a set of processes over a window."""

    cpu_ms: float
    switches: int

    def __sub__(self, earlier: Activity) -> Activity:
        return Activity(self.cpu_ms - earlier.cpu_ms, self.switches - earlier.switches)


def activity(pids: set[int]) -> Activity:
    """CPU time and context switches so far of these processes (all their threads); a
    process that is gone counts 0 (the window's difference then shows it)."""
    cpu_ticks = switches = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            cpu_ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            for thread in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{thread}/status") as status:
                    for line in status:
                        if line.startswith(("voluntary_ctxt_switches:",
                                            "nonvoluntary_ctxt_switches:")):
                            switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return Activity(cpu_ticks * 1000 / CLOCK_TICKS, switches)


def shim_pids(session: Session, config: Config, container_id: str) -> set[int]:
    daemons = daemons_of(session.containerd, [container_id])
    check_origin(session.containerd, config, daemons)
    init_pid = task_list(session.containerd)[container_id][0]
    return shim_tree_pids(daemons, container_pids(init_pid))


def measure(session: Session, seconds: float, settle: float) -> tuple[
        dict[str, Activity], Activity | None]:
    """One idle sleeper per configuration; after ``settle`` s, the activity of each one's shim
    processes over ``seconds`` s (and of pyshim's fork-server, or None); then all are
    deleted."""
    ids = {config.name: session.new_id(config, "idle") for config in CONFIGS}
    try:
        for config in CONFIGS:
            session.start_sleeper(config, ids[config.name], f"idle: {config.name}")
        time.sleep(settle)
        pids = {config.name: shim_pids(session, config, ids[config.name]) for config in CONFIGS}
        servers = forkservers(session.containerd)
        server_pids = {servers[0].pid} if len(servers) == 1 else set()
        before = {name: activity(group) for name, group in pids.items()}
        server_before = activity(server_pids)
        time.sleep(seconds)
        after = {name: activity(group) for name, group in pids.items()}
        server_after = activity(server_pids)
        for name, group in pids.items():
            gone = [pid for pid in group if not os.path.exists(f"/proc/{pid}")]
            if gone:
                raise BenchError(f"idle: {name}: shim process(es) {gone} exited meanwhile")
        return ({name: after[name] - before[name] for name in pids},
                server_after - server_before if server_pids else None)
    finally:
        session.remove(ids.values(), "idle")
