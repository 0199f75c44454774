"""``bench.suite``'s conmon phase (issue 12): podman 4.3 with three monitors, paired in one run.

* ``conmon``: the real conmon 2.1.6 (``/usr/bin/conmon``), the reference;
* ``pyshim``: ``bin/pyshim-conmon`` with its warm monitor-server (a private socket of this
  podman: ``PYSHIM_CONMON_SERVER=<dir>/srv/monitor.sock`` through ``conmon_env_vars``);
* ``pyshim-cold``: the same with ``PYSHIM_CONMON_SERVER=0``: every launch forks its own monitor.

Each has its own private podman (:class:`tests.e2e.podman.PrivatePodman`: own storage, config
and subreaper). Figures:

* latencies, rounds interleaved (order rotating, one warm-up round): wall time of
  ``podman run --rm --network none --rootfs <busybox> /bin/true`` and of
  ``podman exec <sleeper> /bin/true``;
* k8s-file throughput: ``podman run -d --log-driver k8s-file`` of a container that waits for a
  go-file (a bind mount), then writes SIZE bytes of 128-byte lines and a last ``BENCH-END``
  line; timed from creating the go-file until the log file ends with that line (polled
  every ms); MiB/s of the container's output. Round 0 is checked (every line in the log) and
  not recorded;
* monitor PSS per container with N sleepers, one monitor at a time: the ``ConmonPid`` of each
  (``/proc/PID/smaps_rollup``), for ``pyshim`` plus the monitor-server's PSS divided by N.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.suite_env import BenchError, rollup
from bench.suite_report import MIB_KIB, Row, Target, markdown_table, series_row, single_row
from tests.e2e.podman import MONITOR_PATHS, PodmanError, PrivatePodman, TomlValue

MONITORS = ("conmon", "pyshim", "pyshim-cold")
REFERENCE_MONITOR = "conmon"
#: Bytes per output line of the throughput payload (a power of two: SIZE is a whole number of
#: lines, so the sentinel line stays a line of its own).
LINE = 128
SENTINEL = b"BENCH-END"
THROUGHPUT_TIMEOUT = 600.0
#: Issue 12: monitor PSS per container at N=20 (conmon 0.39 MiB, the Go shim 2.6 MiB).
PSS_TARGET_MIB = 2.0
PSS_TARGET_COUNT = 20


class BenchPodman(PrivatePodman):
    """A private podman whose monitor is ``name`` (one of :data:`MONITORS`)."""

    def __init__(self, base_dir: Path, name: str) -> None:
        super().__init__(base_dir, MONITOR_PATHS["conmon" if name == "conmon" else "pyshim"])
        self.name = name
        self.exchange = self.base_dir / "x"  # bind-mounted into throughput containers

    def containers_conf(self) -> dict[str, dict[str, TomlValue]]:
        tables = super().containers_conf()
        if self.name != "conmon":
            variables = tables["engine"]["conmon_env_vars"]
            assert isinstance(variables, list)
            if self.name != "pyshim":  # pyshim-cold: no server instead of the harness's
                tables["engine"]["conmon_env_vars"] = [
                    *(item for item in variables
                      if not str(item).startswith("PYSHIM_CONMON_SERVER=")),
                    "PYSHIM_CONMON_SERVER=0"]
        return tables

    def monitor_servers(self) -> list[psutil.Process]:
        """This podman's pyshim monitor-server(s) (below its subreaper)."""
        found = []
        for process in self.spawner.descendants():
            with contextlib.suppress(psutil.Error):
                words = process.cmdline()
                if ("pyshim.conmon.server" in " ".join(words)
                        and str(self.monitor_server_socket) in words):
                    found.append(process)
        return found

    def monitor_pid(self, container: str) -> int:
        return int(self.inspect(container)["State"]["ConmonPid"])


@dataclass
class ConmonResults:
    run_ms: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MONITORS})
    exec_ms: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MONITORS})
    throughput_mibs: dict[str, list[float]] = field(
        default_factory=lambda: {m: [] for m in MONITORS})
    #: monitor name -> PSS KiB per container (pyshim: with its share of the monitor-server)
    pss_kib: dict[str, float] = field(default_factory=dict)
    #: monitor name -> mean PSS KiB of the monitor processes alone
    monitor_pss_kib: dict[str, float] = field(default_factory=dict)
    server_pss_kib: float | None = None
    notes: list[str] = field(default_factory=list)


def rotated(index: int) -> list[str]:
    shift = index % len(MONITORS)
    return [*MONITORS[shift:], *MONITORS[:shift]]


def timed_ms(podman: PrivatePodman, *args: str) -> float:
    started = time.perf_counter()
    podman.run(*args, check=True)
    return (time.perf_counter() - started) * 1000


@contextlib.contextmanager
def podmen() -> Iterator[dict[str, BenchPodman]]:
    """One started private podman per monitor; all stopped (and removed) at the end."""
    started: dict[str, BenchPodman] = {}
    try:
        for name in MONITORS:
            podman = BenchPodman(Path(tempfile.mkdtemp(prefix="pbc-", dir="/tmp")), name)
            started[name] = podman
            podman.start()
            podman.exchange.mkdir()
        yield started
    finally:
        errors = []
        for podman in started.values():
            try:
                podman.stop()
            except PodmanError as error:
                errors.append(str(error))
        if errors:
            message = "conmon phase: stopping the podmen: " + "\n".join(errors)
            if sys.exc_info()[1] is not None:  # do not hide the failure that got us here
                print(message, file=sys.stderr)
            else:
                raise BenchError(message)


def check_monitor(podman: BenchPodman, pid: int, server: psutil.Process | None) -> None:
    """pyshim's monitors must be children of its monitor-server, pyshim-cold's not (and no
    server of its own may run): else the figures are of the wrong configuration."""
    if podman.name == "conmon":
        return
    parent = psutil.Process(pid).ppid()
    if podman.name == "pyshim" and (server is None or parent != server.pid):
        raise BenchError(f"conmon phase: pyshim monitor {pid} has parent {parent}, not the "
                         f"monitor-server {server.pid if server else '(none)'}")
    if podman.name == "pyshim-cold" and (server is not None or podman.monitor_servers()):
        raise BenchError("conmon phase: pyshim-cold runs a monitor-server")


def the_server(podman: BenchPodman) -> psutil.Process | None:
    if podman.name != "pyshim":
        return None
    servers = podman.monitor_servers()
    if len(servers) != 1:
        raise BenchError(f"conmon phase: pyshim: {len(servers)} monitor-servers, not 1")
    return servers[0]


# ---------------------------------------------------------------------------- throughput


def throughput_command(size: int) -> list[str]:
    payload = (f"while [ ! -e /x/go ]; do usleep 1000; done; "
               f"yes {'x' * (LINE - 1)} | head -c {size}; echo {SENTINEL.decode()}")
    return ["/bin/sh", "-c", payload]


def log_ends_with_sentinel(path: Path) -> bool:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            length = log.tell()
            log.seek(max(0, length - 64))
            return log.read().endswith(b" " + SENTINEL + b"\n")
    except FileNotFoundError:
        return False


def throughput_mibs(podman: BenchPodman, size: int, verify: bool,
                    log_dir: Path | None = None) -> float:
    """MiB/s of one container's ``size`` bytes of stdout into podman's k8s-file log (in
    ``log_dir``, default the podman's own directory)."""
    log = (log_dir or podman.exchange) / f"ctr-{podman.name}.log"
    go = podman.exchange / "go"
    container = podman.detached(
        *throughput_command(size),
        options=["--log-driver", "k8s-file", "--log-opt", f"path={log}",
                 "-v", f"{podman.exchange}:/x"])
    try:
        check_monitor(podman, podman.monitor_pid(container), the_server(podman))
        started = time.perf_counter()
        go.touch()
        deadline = time.monotonic() + THROUGHPUT_TIMEOUT
        while not log_ends_with_sentinel(log):
            if time.monotonic() > deadline:
                raise BenchError(f"conmon phase: {podman.name}: no {SENTINEL!r} in {log} "
                                 f"within {THROUGHPUT_TIMEOUT:g} s")
            time.sleep(0.001)
        elapsed = time.perf_counter() - started
        if verify:
            complete = subprocess.run(["grep", "-c", " stdout F ", str(log)], capture_output=True,
                                      text=True, check=False).stdout.strip()
            if complete != str(size // LINE + 1):
                raise BenchError(f"conmon phase: {podman.name}: {complete} complete lines in "
                                 f"the k8s-file log, not {size // LINE + 1}")
        podman.run("wait", container, check=True, timeout=THROUGHPUT_TIMEOUT)
    finally:
        podman.run("rm", "--force", "--time", "0", container, timeout=60)
        for path in (log, go):
            path.unlink(missing_ok=True)
    return size / 2**20 / elapsed


# --------------------------------------------------------------------------------- phases


def latency_rounds(podmen: dict[str, BenchPodman], results: ConmonResults, rounds: int,
                   progress: Callable[[str], None]) -> None:
    sleepers = {name: podman.detached("/bin/sleep", "100000")
                for name, podman in podmen.items()}
    for name, podman in podmen.items():
        check_monitor(podman, podman.monitor_pid(sleepers[name]), the_server(podman))
    for index in range(rounds + 1):  # round 0: warm-up, not recorded
        for name in rotated(index):
            podman = podmen[name]
            run_ms = timed_ms(podman, "run", "--rm", *podman.container_args(), "/bin/true")
            exec_ms = timed_ms(podman, "exec", sleepers[name], "/bin/true")
            if index:
                results.run_ms[name].append(run_ms)
                results.exec_ms[name].append(exec_ms)
        progress("conmon latency warm-up round done" if index == 0
             else f"conmon latency round {index}/{rounds} done")
    for name, podman in podmen.items():
        podman.run("rm", "--force", "--time", "0", sleepers[name], check=True, timeout=60)


def throughput_rounds(podmen: dict[str, BenchPodman], results: ConmonResults, rounds: int,
                      size_mib: int, progress: Callable[[str], None],
                      log_dir: Path | None = None) -> None:
    for index in range(rounds + 1):  # round 0: the log is checked line by line, not recorded
        figures = {name: throughput_mibs(podmen[name], size_mib << 20, index == 0, log_dir)
                   for name in rotated(index)}
        if index:
            for name, value in figures.items():
                results.throughput_mibs[name].append(value)
        progress("conmon k8s-file verification round done (log checked)" if index == 0
             else f"conmon k8s-file round {index}/{rounds}: " + ", ".join(
                 f"{name} {value:.0f} MiB/s" for name, value in figures.items()))


def memory(podmen: dict[str, BenchPodman], results: ConmonResults, count: int, settle: float,
           progress: Callable[[str], None]) -> None:
    for name in MONITORS:
        podman = podmen[name]
        ids = [podman.detached("/bin/sleep", "100000") for _ in range(count)]
        try:
            time.sleep(settle)
            server = the_server(podman)
            pids = [podman.monitor_pid(container) for container in ids]
            for pid in pids:
                check_monitor(podman, pid, server)
            monitors_kib = [rollup(pid)[0] for pid in pids]
            mean = statistics.mean(monitors_kib)
            results.monitor_pss_kib[name] = mean
            per_container = mean
            if server is not None:
                results.server_pss_kib = rollup(server.pid)[0]
                per_container += results.server_pss_kib / count
            results.pss_kib[name] = per_container
            progress(f"conmon memory N={count} {name}: {per_container / 1024:.2f} MiB "
                           f"PSS per container (monitors alone {mean / 1024:.2f} MiB)")
        finally:
            podman.run("rm", "--force", "--time", "0", *ids, timeout=120)


def measure(rounds: int, count: int, throughput_rounds_: int, size_mib: int, settle: float,
            progress: Callable[[str], None] = print, log_dir: Path | None = None
            ) -> ConmonResults:
    """Every figure of the phase, in one run of the three podmen (k8s-file logs in
    ``log_dir``, default each podman's directory below /tmp)."""
    results = ConmonResults()
    with podmen() as started:
        for podman in started.values():  # warm: the first run pulls the rootfs into storage
            podman.run("run", "--rm", *podman.container_args(), "/bin/true", check=True)
        server = the_server(started["pyshim"])
        latency_rounds(started, results, rounds, progress)
        throughput_rounds(started, results, throughput_rounds_, size_mib, progress, log_dir)
        memory(started, results, count, settle, progress)
        later = the_server(started["pyshim"])
        if server is not None and later is not None and later.pid != server.pid:
            results.notes.append(
                f"conmon phase: pyshim's monitor-server changed meanwhile (pid {server.pid} → "
                f"{later.pid}: pyshim's code changed, a launch found the server stale); "
                "some pyshim figures include cold launches")
    return results


# --------------------------------------------------------------------------------- report


def rows(results: ConmonResults, count: int, size_mib: int) -> list[Row]:
    """The phase's rows for ``bench.suite``'s report: ratios against conmon, issue 12's
    targets (the PSS target is for N ≥ 20)."""
    pss_target = Target(f"≤ {PSS_TARGET_MIB} MiB", PSS_TARGET_MIB, on_ratio=False)
    return [
        single_row(f"monitor PSS per container, N={count}", "MiB", 2,
                   {name: kib / MIB_KIB for name, kib in results.pss_kib.items()},
                   target=pss_target if count >= PSS_TARGET_COUNT else None,
                   columns=MONITORS, reference_name=REFERENCE_MONITOR),
        series_row("`podman run --rm` /bin/true", "ms", 1, results.run_ms,
                   Target("ratio ≤ 1.10", 1.10), chart="podman run --rm (vs conmon)",
                   columns=MONITORS, reference=REFERENCE_MONITOR),
        series_row("`podman exec` /bin/true", "ms", 1, results.exec_ms,
                   Target("ratio ≤ 1.10", 1.10), chart="podman exec (vs conmon)",
                   columns=MONITORS, reference=REFERENCE_MONITOR),
        series_row(f"k8s-file throughput, {size_mib} MiB", "MiB/s", 0,
                   results.throughput_mibs, Target("ratio ≥ 1.0", 1.0, upper=False),
                   chart="k8s-file throughput (vs conmon)", higher_is_better=True,
                   columns=MONITORS, reference=REFERENCE_MONITOR),
    ]


def _version(argv: list[str]) -> str:
    try:
        output = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"? ({error})"
    return output.strip().splitlines()[0] if output.strip() else "?"


def report_section(table_rows: Sequence[Row], rounds: int, throughput_rounds_: int,
                   size_mib: int, count: int, settle: float) -> list[str]:
    """Markdown lines: the phase's table and how each figure is measured."""
    return [
        "## Against conmon: podman with each monitor",
        "",
        f"- podman: `{_version(['podman', '--version'])}`; conmon: "
        f"`{_version(['conmon', '--version'])}`",
        "",
        "Each monitor in its own private podman (own storage, `containers.conf` from "
        "`deploy/podman/containers.conf` with `conmon_path` set, runc, cgroupfs, busybox "
        "`--rootfs`, `--network none`): `conmon` = `/usr/bin/conmon`; `pyshim` = "
        "`bin/pyshim-conmon` with its warm monitor-server (a private socket); `pyshim-cold` = "
        "the same with `PYSHIM_CONMON_SERVER=0`. ratio = pyshim / conmon, ratio cold = "
        "pyshim-cold / conmon (per-round figures: median of the per-round ratios; PSS: ratio "
        "of the values). Targets (issue 12) apply to `pyshim`.",
        "",
        markdown_table(table_rows, MONITORS),
        "",
        f"- **Latencies**: {rounds} rounds after one warm-up round, the monitors interleaved "
        "(the first one rotating): wall time of `podman run --rm --network none --rootfs "
        "<busybox> /bin/true`, then of `podman exec <sleeper> /bin/true`. Medians.",
        f"- **k8s-file throughput**: {throughput_rounds_} round(s) after one whose log is "
        "checked (every line there), the monitors interleaved: `podman run -d --log-driver "
        "k8s-file` of a container that waits for a go-file (bind mount), then writes "
        f"{size_mib} MiB of {LINE}-byte lines (`yes … | head -c`) and a last "
        f"`{SENTINEL.decode()}` line; timed from creating the go-file until the log file ends "
        "with that line (polled every ms). MiB/s of the container's output; higher is better.",
        f"- **Monitor PSS**: one monitor at a time, {count} sleepers (`podman run -d … "
        f"/bin/sleep`), {settle:g} s settle, mean `Pss:` of each container's `ConmonPid` "
        "(`/proc/PID/smaps_rollup`); pyshim adds its monitor-server's PSS / N. pyshim's "
        "monitors are checked to be the server's children, pyshim-cold's not. Target "
        f"≤ {PSS_TARGET_MIB} MiB at N ≥ {PSS_TARGET_COUNT}.",
    ]
