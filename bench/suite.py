"""One benchmark of pyshim with its warm fork-server (``pyshim``), pyshim with the fork-server
off (``pyshim-cold``) and the Go reference (``runc-v2``), all in ONE private containerd 1.6,
driven by ``ctr``; writes a markdown report and a chart.

Figures (ratios are pyshim/runc-v2 and pyshim-cold/runc-v2; for per-round figures the median
over rounds of the per-round ratio):

* memory per container at N idle containers (``/bin/sleep 100000``, default N = 1, 20, 50):
  PSS and RSS (``/proc/PID/smaps_rollup``) summed over the shim processes (the daemons and
  their helpers; for pyshim also the fork-server; never the containers' processes, runc,
  containerd or ctr), divided by N. One configuration at a time: start N, settle, measure,
  delete all, wait until the shims are gone. Once with the host's KSM as found, then for the
  largest N with KSM on (the bench turns it on and restores every value it changed);
* latencies (``--rounds``, interleaved configurations, order rotating, one warm-up round):
  ``ctr run -d … /bin/sleep``, ``ctr task exec … /bin/true``, exit detection (SIGKILL of the
  container's init until a ``ctr events`` subscriber reads its ``/tasks/exit``) and
  ``ctr run --rm … /bin/true``;
* stdout relay (``--relay-rounds``): ``dd`` of ``--relay-mib`` MiB through attached
  ``ctr run --rm``; MB/s net of the same round's ``/bin/true`` baseline, and raw;
* bursts (``--burst-rounds``): wall time to start ``--burst`` containers in sequence, and from
  ``--workers`` threads in parallel;
* idle wakeups (``--idle-seconds``, default 60): CPU time and context switches of one idle
  container's shim processes over that window (``bench.suite_idle``);
* exec soak (``--soak-execs``, default 10,000): RSS growth of one shim over that many exec
  create/start/wait/delete cycles, pyshim and runc-v2 (``bench.suite_soak``);
* conmon (``bench.suite_conmon``, no containerd): podman 4.3 with the real conmon, pyshim-conmon
  with its warm monitor-server and pyshim-conmon without it, each in its own private podman:
  ``podman run --rm`` and ``podman exec`` latencies (``--rounds``), k8s-file throughput
  (``--conmon-mib``, ``--conmon-throughput-rounds``) and monitor PSS per container at
  ``--conmon-count`` sleepers; ratios against conmon, in a table of their own.

``--phases`` runs some of them only (e.g. ``--phases idle,soak --idle-seconds 10
--soak-execs 200 --out /tmp/b.md`` to try two quickly, or ``--phases conmon --rounds 3
--conmon-count 5 --conmon-mib 64 --conmon-throughput-rounds 1 --out /tmp/c.md``).

Needs root, containerd, ctr, runc and /bin/busybox. Everything it starts is stopped and removed
at the end, also on failure or Ctrl-C. A failed ``ctr`` stops the suite with a message.

Usage: python -m bench.suite [--rounds N] [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

import psutil

from bench import (
    conmon_version,
    suite_conmon,
    suite_idle,
    suite_ksm,
    suite_memory,
    suite_relay,
    suite_soak,
    suite_timing,
)
from bench.common import missing_requirements
from bench.suite_ctr import Session
from bench.suite_env import (
    CONFIGS,
    PYSHIM_COLD,
    SHIM_BINARY,
    BenchError,
    Config,
    NotForked,
    check_origin,
    daemons_of,
    forkservers,
    suite_containerd,
)
from bench.suite_events import TimedEvents
from bench.suite_report import (
    MIB_KIB,
    Row,
    Target,
    draw_chart,
    markdown_table,
    series_row,
    single_row,
)
from pyshim.shim import forkclient

REPO = Path(__file__).resolve().parents[1]
PSS_TARGET_MIB = 1.3
PHASES = ("memory", "latency", "relay", "burst", "ksm", "idle", "soak", "conmon")
#: The phases that need the private containerd (the conmon phase runs podman only).
CONTAINERD_PHASES = frozenset(PHASES) - {"conmon"}
#: The configurations the exec soak runs (pyshim-cold's daemon runs the same code as pyshim's).
SOAK_CONFIGS = ("pyshim", "runc-v2")


@dataclass
class Results:
    #: group ("N=1", ..., "N=50 with KSM") → config name → (PSS KiB, RSS KiB) per container
    memory: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    latency: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {config.name: [] for config in CONFIGS})
    relay: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {config.name: [] for config in CONFIGS})
    burst_sequence: dict[str, list[float]] = field(
        default_factory=lambda: {config.name: [] for config in CONFIGS})
    burst_parallel: dict[str, list[float]] = field(
        default_factory=lambda: {config.name: [] for config in CONFIGS})
    #: median ms of `bin/pyshim-conmon --version` (and conmon's own, when installed)
    conmon_version: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ksm_found: dict[str, str] = field(default_factory=dict)
    load_start: float = 0.0
    load_end: float = 0.0
    #: config name → activity of its idle shim over the window; the fork-server's
    idle: dict[str, suite_idle.Activity] = field(default_factory=dict)
    idle_forkserver: suite_idle.Activity | None = None
    soak: dict[str, suite_soak.Soak] = field(default_factory=dict)
    conmon: suite_conmon.ConmonResults | None = None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 rounds, N=1,5, small relay and bursts "
                             "(explicit options win)")
    parser.add_argument("--rounds", type=int, help="latency rounds (default 20; 3 with --quick)")
    parser.add_argument("--counts", help="container counts for memory, comma-separated "
                                         "(default 1,20,50; 1,5 with --quick)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds N idle containers settle before memory is measured")
    parser.add_argument("--relay-rounds", type=int, help="stdout relay rounds (default 3; 1)")
    parser.add_argument("--relay-mib", type=int, help="MiB per relay run (default 512; 256)")
    parser.add_argument("--burst", type=int, help="containers per burst (default 50; 10)")
    parser.add_argument("--burst-rounds", type=int, help="burst rounds (default 3; 1)")
    parser.add_argument("--workers", type=int, default=4, help="threads of the parallel burst")
    parser.add_argument("--no-ksm", action="store_true", help="skip the 'with KSM' rows")
    parser.add_argument("--idle-seconds", type=float,
                        help="idle-wakeup window in seconds (default 60; 10 with --quick)")
    parser.add_argument("--soak-execs", type=int,
                        help="exec cycles of the soak (default 10000; 200 with --quick)")
    parser.add_argument("--conmon-count", type=int,
                        help="sleepers per monitor for the conmon phase's PSS (default 20; 5)")
    parser.add_argument("--conmon-mib", type=int,
                        help="MiB per k8s-file throughput run of the conmon phase (default 512;"
                             " 64)")
    parser.add_argument("--conmon-throughput-rounds", type=int,
                        help="k8s-file throughput rounds of the conmon phase (default 3; 1)")
    parser.add_argument("--conmon-log-dir", type=Path,
                        help="where the conmon phase's k8s-file logs go (default: below /tmp,"
                             " the disk; e.g. /dev/shm to leave the disk out)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated phases to run (default all: {','.join(PHASES)})")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="markdown report (the chart goes next to it, as .png)")
    args = parser.parse_args(argv)
    defaults = {"rounds": (20, 3), "relay_rounds": (3, 1), "relay_mib": (512, 256),
                "burst": (50, 10), "burst_rounds": (3, 1), "idle_seconds": (60.0, 10.0),
                "soak_execs": (10_000, 200), "conmon_count": (20, 5), "conmon_mib": (512, 64),
                "conmon_throughput_rounds": (3, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    counts = args.counts or ("1,5" if args.quick else "1,20,50")
    try:
        args.counts = sorted({int(word) for word in counts.split(",")})
    except ValueError:
        parser.error(f"--counts: not a list of integers: {counts!r}")
    if args.counts[0] < 1:
        parser.error("--counts must be positive")
    args.phases = [word.strip() for word in args.phases.split(",") if word.strip()]
    unknown = sorted(set(args.phases) - set(PHASES))
    if unknown:
        parser.error(f"--phases: unknown {unknown}; known: {', '.join(PHASES)}")
    return args


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


T = TypeVar("T")
ATTEMPTS = 3


def wait_for_forkserver(session: Session, timeout: float = 20.0) -> psutil.Process:
    """The fork-server, once exactly one runs and its socket exists."""
    path = Path(forkclient.socket_path(str(session.containerd.address)))
    deadline = time.monotonic() + timeout
    while True:
        servers = forkservers(session.containerd)
        if len(servers) == 1 and path.exists():
            return servers[0]
        if time.monotonic() > deadline:
            raise BenchError(f"no (single) pyshim fork-server serving {path} within {timeout} s:"
                             f" {[server.pid for server in servers]}")
        time.sleep(0.05)


def measured(session: Session, results: Results, what: str, action: Callable[[], T]) -> T:
    """``action()``, done again (at most :data:`ATTEMPTS` times in all) if pyshim's code changed
    meanwhile: a start after a change gets a cold daemon from a stale fork-server, which then
    is replaced. Each repetition is reported (stderr and the report's notes)."""
    for _ in range(ATTEMPTS):
        try:
            result = action()
            failure: NotForked | None = None
        except NotForked as error:
            failure = error
        stamp = forkclient.code_stamp()
        if stamp == session.code_stamp:
            if failure is not None:
                raise failure
            return result
        session.code_stamp = stamp
        note = (f"{what}: pyshim's code changed during the measurement (someone edited "
                "`pyshim/`), so a start found the fork-server stale and forked its own daemon; "
                "measured again with the new fork-server")
        results.notes.append(note)
        progress(note)
        wait_for_forkserver(session)
    raise BenchError(f"{what}: pyshim's code changed during each of {ATTEMPTS} attempts")


def rotated(index: int) -> list[Config]:
    """The configurations, starting with a different one each round."""
    shift = index % len(CONFIGS)
    return [*CONFIGS[shift:], *CONFIGS[:shift]]


# ---------------------------------------------------------------------------------- phases


def verify_configs(session: Session, results: Results) -> None:
    """A container of each configuration runs; the fork-server is up and forks pyshim's
    daemons, and pyshim-cold's are not its children (so the wrapper really turned it off)."""
    pyshim, cold, runc = CONFIGS
    containerd = session.containerd
    # The first pyshim start launches the fork-server (and forks its own daemon).
    session.code_stamp = forkclient.code_stamp()
    first = session.new_id(pyshim, "warm")
    session.ctr("warm-up: pyshim run --rm (launches the fork-server)",
                *session.run_argv(pyshim, rm=True), first, "/bin/true")
    server = wait_for_forkserver(session)
    for config in CONFIGS:
        container_id = session.new_id(config, "check")
        step = f"check {config.name} ({config.runtime})"
        try:
            session.start_sleeper(config, container_id, step)
            daemons = daemons_of(containerd, [container_id])
            check_origin(containerd, config, daemons)
            if config is cold:
                daemon = daemons[0]
                results.notes.append(
                    f"`{PYSHIM_COLD}` resolved to the wrapper `containerd-shim-pyshimcold-v1` "
                    f"(first on containerd's PATH; `PYSHIM_FORKSERVER=0 exec "
                    f"bin/containerd-shim-pyshim-v1`): a container ran, and its shim daemon "
                    f"(pid {daemon.pid}) had parent {daemon.ppid()}, not the fork-server "
                    f"(pid {server.pid}); pyshim's daemons are checked to be the fork-server's "
                    "children, pyshim-cold's not, at every start measured.")
        finally:
            session.remove([container_id], step)
    progress(f"configurations checked: fork-server pid {server.pid}; "
             f"{runc.name} and {cold.name} run")


def memory_phase(session: Session, results: Results, counts: list[int], settle: float) -> None:
    for count in counts:
        group = f"N={count}"
        results.memory[group] = {}
        for config in CONFIGS:
            memory = measured(session, results, f"memory {group} {config.name}",
                              functools.partial(suite_memory.measure, session, config, count,
                                                settle))
            results.memory[group][config.name] = (memory.pss_kib / count, memory.rss_kib / count)
            progress(f"memory {group} {config.name}: PSS {memory.pss_kib / count / MIB_KIB:.2f}"
                     f" MiB, RSS {memory.rss_kib / count / MIB_KIB:.2f} MiB per container "
                     f"({memory.processes} processes)")


def ksm_phase(session: Session, results: Results, count: int, settle: float) -> None:
    reason = suite_ksm.unavailable_reason()
    if reason is not None:
        results.notes.append(f"'with KSM' rows skipped: {reason}.")
        progress(f"KSM rows skipped: {reason}")
        return
    group = f"N={count} with KSM"
    results.memory[group] = {}
    if results.ksm_found.get("run") == "1":
        results.notes.append("Host KSM was already on (run=1): the rows without 'with KSM' "
                             "include its merging too.")
    log: list[str] = []
    with suite_ksm.enabled():
        progress(f"KSM on: {suite_ksm.state()}")
        for config in CONFIGS:
            memory = measured(session, results, f"memory {group} {config.name}",
                              functools.partial(suite_memory.measure, session, config, count,
                                                settle, ksm=True, log=log))
            results.memory[group][config.name] = (memory.pss_kib / count, memory.rss_kib / count)
            progress(f"memory {group} {config.name}: PSS {memory.pss_kib / count / MIB_KIB:.2f}"
                     f" MiB, RSS {memory.rss_kib / count / MIB_KIB:.2f} MiB per container")
    restored = suite_ksm.state()
    progress(f"KSM settings restored: {restored}")
    results.notes.append(
        "KSM rows: the bench wrote " + ", ".join(f"{k}={v}" for k, v in suite_ksm.SETTINGS.items())
        + " and afterwards restored what it had changed: now "
        + ", ".join(f"{k}={restored[k]}" for k in suite_ksm.SETTINGS if k in restored)
        + " (pages merged meanwhile stay merged until written). KSM per configuration: "
        + "; ".join(log) + ".")


def latency_phase(session: Session, results: Results, rounds: int) -> None:
    with TimedEvents(session.containerd) as events:
        events.sync()
        def one_round(index: int) -> dict[str, dict[str, float]]:
            return {config.name: suite_timing.latency_round(session, events, config, index)
                    for config in rotated(index)}

        for index in range(rounds + 1):  # round 0: warm-up, not recorded
            figures = measured(session, results, f"latency round {index}",
                               functools.partial(one_round, index))
            if index:
                for name, values in figures.items():
                    results.latency[name].append(values)
            progress("latency warm-up round done" if index == 0
                     else f"latency round {index}/{rounds} done")


def relay_phase(session: Session, results: Results, rounds: int, size_mib: int) -> None:
    def one_round(index: int) -> dict[str, dict[str, float]]:
        return {config.name: suite_relay.relay_round(session, config, index, size_mib,
                                                     verify=index == 0)
                for config in rotated(index)}

    for index in range(rounds + 1):  # round 0: output verified, not recorded
        figures = measured(session, results, f"relay round {index}",
                           functools.partial(one_round, index))
        if index:
            for name, values in figures.items():
                results.relay[name].append(values)
        progress("relay verification round done (output checked)" if index == 0
                 else f"relay round {index}/{rounds} done")


def burst_phase(session: Session, results: Results, rounds: int, count: int,
                workers: int) -> None:
    def one_round(index: int) -> dict[str, tuple[float, float]]:
        return {config.name: (suite_timing.burst(session, config, count, 1, index),
                              suite_timing.burst(session, config, count, workers, index))
                for config in rotated(index)}

    for index in range(1, rounds + 1):
        figures = measured(session, results, f"burst round {index}",
                           functools.partial(one_round, index))
        for name, (sequence, parallel) in figures.items():
            results.burst_sequence[name].append(sequence)
            results.burst_parallel[name].append(parallel)
        progress(f"burst round {index}/{rounds} done")


def idle_phase(session: Session, results: Results, seconds: float, settle: float) -> None:
    figures, server = measured(session, results, "idle wakeups",
                               functools.partial(suite_idle.measure, session, seconds, settle))
    results.idle = figures
    results.idle_forkserver = server
    progress("idle wakeups over {:g} s: {}".format(seconds, "; ".join(
        f"{name} {one.cpu_ms:.0f} ms CPU, {one.switches} switches"
        for name, one in figures.items())))
    if server is not None:
        results.notes.append(
            f"Idle window: pyshim's fork-server (one per node, not in the row) used "
            f"{server.cpu_ms:.0f} ms CPU and {server.switches} context switches.")


def soak_phase(session: Session, results: Results, cycles: int) -> None:
    for config in CONFIGS:
        if config.name not in SOAK_CONFIGS:
            continue
        soak = measured(session, results, f"exec soak {config.name}",
                        functools.partial(suite_soak.measure, session, config, cycles))
        results.soak[config.name] = soak
        progress(f"exec soak {config.name}: {cycles} cycles in {soak.seconds:.0f} s, RSS "
                 f"{soak.rss_before_kib} → {soak.rss_after_kib} KiB "
                 f"({soak.growth_kib:+d} KiB); after each tenth: {soak.samples}")
    results.notes.append(
        "Exec soak: RSS (KiB) after the warm-up, then after each tenth of the cycles: "
        + "; ".join(f"{name} {soak.rss_before_kib}, {', '.join(map(str, soak.samples))} "
                    f"({soak.seconds:.0f} s)" for name, soak in results.soak.items())
        + f"; {suite_soak.CONCURRENCY} cycles at "
        "a time over ttrpc straight to the shim's socket; pyshim-cold not run (its daemon "
        "runs the same code).")


def conmon_phase(args: argparse.Namespace, results: Results) -> None:
    progress("conmon phase: three private podmen (conmon, pyshim, pyshim-cold)")
    conmon = suite_conmon.measure(args.rounds, args.conmon_count, args.conmon_throughput_rounds,
                                  args.conmon_mib, args.settle, progress, args.conmon_log_dir)
    results.conmon = conmon
    results.notes += conmon.notes
    if conmon.server_pss_kib is not None:
        results.notes.append(
            f"conmon phase, N={args.conmon_count}: pyshim's monitor-server (one per node) had "
            f"{conmon.server_pss_kib / MIB_KIB:.2f} MiB PSS (its 1/N share is in pyshim's "
            "figure); the monitors alone: " + ", ".join(
                f"{name} {kib / MIB_KIB:.2f} MiB" for name, kib in conmon.monitor_pss_kib.items())
            + " each.")


# ---------------------------------------------------------------------------------- report


def build_rows(args: argparse.Namespace, results: Results) -> list[Row]:
    rows: list[Row] = []
    largest = f"N={args.counts[-1]}"
    # Issue 14: at or below the Go shim without KSM; with KSM at most PSS_TARGET_MIB.
    ksm_target = Target(f"≤ {PSS_TARGET_MIB} MiB", PSS_TARGET_MIB, on_ratio=False)
    plain_target = Target("ratio ≤ 1.00", 1.00)
    for group, per_config in results.memory.items():
        is_target = group.startswith(f"{largest}") and args.counts[-1] >= 50
        pss_target = ksm_target if "KSM" in group else plain_target
        pss = {name: values[0] / MIB_KIB for name, values in per_config.items()}
        rss = {name: values[1] / MIB_KIB for name, values in per_config.items()}
        rows.append(single_row(f"shim PSS per container, {group}", "MiB", 2, pss,
                               target=pss_target if is_target else None,
                               chart=f"PSS/container {group}" if is_target else None))
        rows.append(single_row(f"shim RSS per container, {group}", "MiB", 2, rss))

    def latency(key: str) -> dict[str, list[float]]:
        return {name: [run[key] for run in runs] for name, runs in results.latency.items()}

    def relay(key: str) -> dict[str, list[float]]:
        return {name: [run[key] for run in runs] for name, runs in results.relay.items()}

    if any(results.latency.values()):
        rows += [
            series_row("`ctr run -d` sleep (create+start)", "ms", 1, latency("run_d_ms"),
                       Target("ratio ≤ 1.05", 1.05), chart="ctr run -d"),
            series_row("`ctr run --rm` /bin/true", "ms", 1, latency("run_rm_ms"),
                       Target("ratio ≤ 1.05", 1.05), chart="ctr run --rm"),
            series_row("`ctr task exec` /bin/true", "ms", 1, latency("exec_ms"),
                       Target("ratio ≤ 1.00", 1.00), chart="ctr task exec"),
            series_row("exit detection (SIGKILL → /tasks/exit read)", "ms", 2,
                       latency("exit_ms"), Target("ratio ≤ 1.00 (below runc-v2)", 1.00),
                       chart="exit detection"),
        ]
    if any(results.relay.values()):
        rows += [
            series_row(f"stdout relay, {args.relay_mib} MiB, net of baseline", "MB/s", 0,
                       relay("bulk_net_mbs"), Target("ratio ≥ 1.2", 1.2, upper=False),
                       chart="stdout relay (net)", higher_is_better=True),
            series_row(f"stdout relay, {args.relay_mib} MiB, raw", "MB/s", 0,
                       relay("bulk_raw_mbs"), higher_is_better=True),
        ]
    if any(results.burst_sequence.values()):
        rows += [
            series_row(f"start {args.burst} containers in sequence", "s", 2,
                       results.burst_sequence, chart=f"{args.burst} starts, sequence"),
            series_row(f"start {args.burst} containers, {args.workers} in parallel", "s", 2,
                       results.burst_parallel,
                       chart=f"{args.burst} starts, {args.workers} parallel"),
        ]
    if results.idle:
        window = f"{args.idle_seconds:g} s"
        rows += [
            single_row(f"idle shim over {window}: CPU time", "ms", 0,
                       {name: one.cpu_ms for name, one in results.idle.items()},
                       Target("= 0", 0.0, on_ratio=False)),
            single_row(f"idle shim over {window}: context switches", "count", 0,
                       {name: float(one.switches) for name, one in results.idle.items()},
                       Target("= 0", 0.0, on_ratio=False)),
        ]
    if results.soak:
        rows.append(single_row(
            f"exec soak: RSS growth over {args.soak_execs:,} exec cycles", "KiB", 0,
            {name: float(soak.growth_kib) for name, soak in results.soak.items()},
            Target("< 1 MiB", MIB_KIB, on_ratio=False)))
    version_ms = results.conmon_version.get("pyshim-conmon --version")
    if version_ms is not None:
        # podman's monitor check; no runc-v2 counterpart (conmon's own is in the notes).
        rows.append(single_row("`pyshim-conmon --version` (50 runs)", "ms", 2,
                               {"pyshim": version_ms},
                               Target("≤ 10 ms", 10.0, on_ratio=False)))
        others = ", ".join(f"`{command}` {ms:.2f} ms"
                           for command, ms in results.conmon_version.items()
                           if command != "pyshim-conmon --version")
        results.notes.append(f"--version medians besides: {others}.")
    return rows


def first_line(argv: list[str]) -> str:
    try:
        output = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"? ({error})"
    return output.strip().splitlines()[0] if output.strip() else "?"


def environment() -> list[str]:
    memory = psutil.virtual_memory().total / (1 << 30)
    return [
        f"date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"host: {os.cpu_count()} CPUs (nproc), {memory:.1f} GiB RAM, "
        f"kernel {platform.release()}",
        f"containerd: `{first_line(['containerd', '--version'])}`",
        f"runc: `{first_line(['runc', '--version'])}`",
        f"Python (pyshim's venv): {platform.python_version()}",
        f"pyshim: commit {first_line(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'])}"
        + (" with uncommitted changes"
           if first_line(["git", "-C", str(REPO), "status", "--porcelain", "--", "pyshim", "bin"])
           != "?" else ""),
    ]


def document(args: argparse.Namespace, results: Results, rows: list[Row], wall_s: float,
             chart_note: str | None, chart_name: str,
             conmon_rows: Sequence[Row] = ()) -> str:
    command = ".venv/bin/python -m bench.suite" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    ksm_found = ", ".join(f"{key}={value}" for key, value in results.ksm_found.items())
    counts = ", ".join(map(str, args.counts))
    lines = [
        "# Benchmarks: pyshim (fork-server on and off) against runc-v2",
        "",
        *(f"- {line}" for line in environment()),
        f"- host KSM as found: {ksm_found or 'not available'}",
        f"- command: `{command}`" + (" (quick smoke run)" if args.quick else ""),
        f"- total wall time: {wall_s / 60:.1f} min; load average (1 min) "
        f"{results.load_start:.2f} at the start, {results.load_end:.2f} at the end (other "
        "work on the host is not stopped: it adds noise to the timings)",
        "",
        "All three configurations run in one private containerd 1.6 (`ctr`, busybox rootfs): "
        "`pyshim` = `io.containerd.pyshim.v1` with its warm fork-server (default), "
        "`pyshim-cold` = the same shim with `PYSHIM_FORKSERVER=0` (start forks its own daemon, "
        "cold imports), `runc-v2` = `io.containerd.runc.v2`. "
        "ratio = pyshim / runc-v2, ratio cold = pyshim-cold / runc-v2: for per-round figures "
        "the median over rounds of the per-round ratio, for memory the ratio of the values. "
        "Targets apply to `pyshim`; the cold verdict is given for comparison.",
        "",
        markdown_table(rows),
        "",
    ]
    if chart_note is None:
        lines += [f"![ratios against runc-v2, and shim memory per container]({chart_name})", ""]
    else:
        lines += [f"({chart_note})", ""]
    lines += [
        "## How each figure is measured",
        "",
        f"- **Memory**: for N in {counts}, one configuration at a time: start N idle containers "
        "(`ctr run -d … /bin/sleep 100000`, in sequence), find the shim processes (each "
        "container's shim daemon and its descendants without the container's own processes, "
        "found through `ctr task ls`, which calls every shim's State; for pyshim also the "
        f"fork-server), leave them idle {args.settle:g} s, sum `Pss:` and `Rss:` of "
        "`/proc/PID/smaps_rollup` over them, divide by N, check they are still the shim "
        "processes; then kill and delete all and wait until the "
        "shims are gone. RSS counts shared pages once per process, PSS divides them among "
        "the sharers. *with KSM*: the bench sets `/sys/kernel/mm/ksm/run` = 1 and "
        "`pages_to_scan` = 5000, waits after the State calls for the settle time and until ksmd "
        "did at least 3 more `full_scans` and `pages_sharing` changed by at most 1 % over the "
        "last one (timeout 180 s), measures, and restores every value it changed at the end.",
        f"- **Latencies**: {args.rounds} rounds after one warm-up round, the configurations "
        "interleaved in every round (the first one rotating). Per round and configuration: "
        "wall time of `ctr run -d … /bin/sleep 100000`; of `ctr task exec --exec-id e … "
        "/bin/true` in it; exit detection: a `ctr events` subscriber (started before, its "
        "pipe read raw by a thread that stamps each line when `read` returns) — t0 just "
        "before `kill(init pid, SIGKILL)`, t1 when the `/tasks/exit` line of that container "
        "and pid is read; then (untimed) delete; then wall time of `ctr run --rm … /bin/true`. "
        "Medians.",
        f"- **Stdout relay**: {args.relay_rounds} rounds after a verification round whose "
        "output is checked byte for byte (functions of `bench.stdout_relay`): attached "
        f"`ctr run --rm … dd if=/dev/zero bs=1M count={args.relay_mib}`, ctr's stdout on "
        "/dev/null; net = MB over (wall time minus the same round's `ctr run --rm /bin/true`), "
        "raw = over the whole wall time. MB = 10^6 bytes. Higher is better.",
        f"- **Bursts**: {args.burst_rounds} rounds: wall time to start {args.burst} sleepers "
        f"with `ctr run -d`, one after the other, and from {args.workers} threads each "
        "running `ctr run -d`; then (untimed) all are deleted.",
        f"- **Idle wakeups**: one idle sleeper per configuration, all three at once; after "
        f"{args.settle:g} s, CPU time (`/proc/PID/stat` utime + stime) and context switches "
        "(voluntary + nonvoluntary, `/proc/PID/task/*/status`, every thread) of each one's "
        f"shim processes over {args.idle_seconds:g} s. Targets: zero (the Go shim's runtime "
        "wakes up every 30 s or so).",
        f"- **Exec soak**: per configuration (pyshim, runc-v2) one sleeper; "
        f"{suite_soak.WARM_UP} warm-up cycles, then {args.soak_execs:,} cycles of `Exec`, "
        "`Start`, `Wait`, `Delete` of `/bin/true` over ttrpc straight to the shim's socket, "
        f"{suite_soak.CONCURRENCY} at a time; growth = the daemon's RSS after minus after the "
        "warm-up. Target: < 1 MiB.",
        "- Every pyshim start measured is checked to have been forked by the fork-server, "
        "every pyshim-cold start not to.",
    ]
    if conmon_rows:
        lines += ["", *suite_conmon.report_section(
            conmon_rows, args.rounds, args.conmon_throughput_rounds, args.conmon_mib,
            args.conmon_count, args.settle)]
    if results.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- main


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every clean-up (containerd, KSM settings) runs


def run(args: argparse.Namespace) -> Results:
    results = Results(load_start=os.getloadavg()[0])
    if suite_ksm.unavailable_reason() is None or suite_ksm.KSM_DIR.is_dir():
        results.ksm_found = suite_ksm.state()
    if CONTAINERD_PHASES & set(args.phases):
        containerd_phases(args, results)
    if "conmon" in args.phases:
        conmon_phase(args, results)
    results.conmon_version = conmon_version.figures(runs=50)
    results.load_end = os.getloadavg()[0]
    return results


def containerd_phases(args: argparse.Namespace, results: Results) -> None:
    ids: list[str] = []
    with suite_containerd(ids) as (containerd, rootfs):
        session = Session(containerd, rootfs, ids)
        progress(f"private containerd {containerd.base_dir} up")
        verify_configs(session, results)
        if "memory" in args.phases:
            memory_phase(session, results, args.counts, args.settle)
        if "latency" in args.phases:
            latency_phase(session, results, args.rounds)
        if "relay" in args.phases:
            relay_phase(session, results, args.relay_rounds, args.relay_mib)
        if "burst" in args.phases:
            burst_phase(session, results, args.burst_rounds, args.burst, args.workers)
        if "idle" in args.phases:
            idle_phase(session, results, args.idle_seconds, args.settle)
        if "soak" in args.phases:
            soak_phase(session, results, args.soak_execs)
        if args.no_ksm or "ksm" not in args.phases:
            results.notes.append("'with KSM' rows skipped.")
        elif "memory" in args.phases:
            ksm_phase(session, results, args.counts[-1], args.settle)
    progress("private containerd stopped and removed")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    reason = missing_requirements()
    if reason is None and not os.access(SHIM_BINARY, os.X_OK):
        reason = f"{SHIM_BINARY} is missing or not executable"
    if reason is not None:
        sys.exit(f"bench.suite: {reason}")
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    try:
        results = run(args)
    except KeyboardInterrupt:
        sys.exit("bench.suite: interrupted; everything it started is stopped, KSM restored")
    except (RuntimeError, OSError) as error:  # BenchError, CtrError, ContainerdError, ...
        message = f"bench.suite: failed: {error}"
        if error.__context__ is not None:
            message += f"\n(after: {error.__context__})"
        sys.exit(message)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    wall_s = time.monotonic() - began
    rows = build_rows(args, results)
    conmon_rows = (suite_conmon.rows(results.conmon, args.conmon_count, args.conmon_mib)
                   if results.conmon is not None else [])
    out: Path = args.out
    chart_path = out.with_suffix(".png")
    chart_note = draw_chart(
        [*rows, *conmon_rows],
        {group: {name: values[0] / MIB_KIB for name, values in per_config.items()}
         for group, per_config in results.memory.items()},
        PSS_TARGET_MIB, chart_path,
        f"pyshim vs runc-v2, containerd 1.6, {os.cpu_count()} CPUs, "
        f"{args.rounds} rounds{' (quick)' if args.quick else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document(args, results, rows, wall_s, chart_note, chart_path.name,
                            conmon_rows))
    print(markdown_table(rows))
    if conmon_rows:
        print("\nAgainst conmon (podman 4.3):\n"
              + markdown_table(conmon_rows, suite_conmon.MONITORS))
    for note in results.notes:
        print(f"\nnote: {note}")
    print(f"\ntotal wall time {wall_s / 60:.1f} min; wrote {out}"
          + (f" and {chart_path}" if chart_note is None else f" ({chart_note})"))


if __name__ == "__main__":
    main()
