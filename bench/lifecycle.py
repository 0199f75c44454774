"""Task lifecycle cost through a real containerd 1.6: pyshim (io.containerd.pyshim.v1) against
the Go reference (io.containerd.runc.v2), both driven by ``ctr`` on one private containerd.

Per round and runtime (rounds interleave the runtimes, so drift hits both alike):

* ``run -d``: wall time of ``ctr run -d … /bin/sleep 1000`` (shim start, Create, Start);
* ``exec``: wall time of ``ctr task exec … /bin/true`` in that container;
* idle PSS: the proportional set size (``/proc/PID/smaps_rollup``) of every shim process serving
  that one idle container (the shim daemon and any helper processes it forked, without the
  container's own processes);
* ``run --rm``: wall time of ``ctr run --rm … /bin/true`` (the whole lifecycle including
  Delete, Shutdown and the ``delete`` action).

Figures are medians over the rounds; ratios are pyshim/runc-v2, paired per round, then the
median. Needs root, containerd, ctr, runc and /bin/busybox; everything it starts is stopped and
removed at the end (the private containerd's stop()).

Usage: python -m bench.lifecycle [--rounds N] [--runtime NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

from bench.common import (
    PYSHIM,
    RUNC_V2,
    SHORT,
    missing_requirements,
    private_containerd,
    timed,
    wait_for_no_shims,
)
from tests.e2e.conftest import shim_processes, task_list
from tests.e2e.containerd import CtrError, PrivateContainerd

#: (key, label, unit) of each figure, in table order.
FIGURES = [
    ("run_d_ms", "`ctr run -d` (create+start)", "ms"),
    ("exec_ms", "`ctr task exec /bin/true`", "ms"),
    ("run_rm_ms", "`ctr run --rm /bin/true`", "ms"),
    ("pss_kib", "idle shim PSS, one container", "KiB"),
]


def pss_kib(pid: int) -> int:
    """PSS of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def shim_tree_pids(shims: list[psutil.Process], container_pids: set[int]) -> set[int]:
    """The shim processes and their descendants, without the container's processes."""
    found: set[int] = set()
    for shim in shims:
        found.add(shim.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in shim.children(recursive=True):
                found.add(child.pid)
    return found - container_pids


def container_pids(init_pid: int) -> set[int]:
    """The container's init and all its descendants."""
    try:
        init = psutil.Process(init_pid)
        return {init_pid, *(child.pid for child in init.children(recursive=True))}
    except psutil.NoSuchProcess:
        return {init_pid}


def one_round(
    containerd: PrivateContainerd, runtime: str, rootfs: Path, index: int
) -> dict[str, float]:
    short = SHORT.get(runtime, "rt")
    figures: dict[str, float] = {}
    cid = f"bench-{short}-{os.getpid()}-{index}"
    base = ["--runtime", runtime, "--rootfs", str(rootfs)]
    try:
        figures["run_d_ms"] = timed(lambda: containerd.ctr("run", "-d", *base, cid,
                                                           "/bin/sleep", "1000"))
        figures["exec_ms"] = timed(lambda: containerd.ctr("task", "exec", "--exec-id", "e1",
                                                          cid, "/bin/true"))
        time.sleep(0.5)  # let the shim settle (lazy imports, GC) before measuring it idle
        init_pid = task_list(containerd)[cid][0]
        shims = shim_processes(containerd)
        if len(shims) != 1:
            raise RuntimeError(f"expected one shim for {cid}, found {len(shims)}")
        pids = shim_tree_pids(shims, container_pids(init_pid))
        figures["pss_kib"] = float(sum(pss_kib(pid) for pid in pids))
    finally:
        containerd.ctr("task", "rm", "--force", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
    rm_id = f"{cid}-rm"
    figures["run_rm_ms"] = timed(lambda: containerd.ctr("run", "--rm", *base, rm_id,
                                                        "/bin/true"))
    wait_for_no_shims(containerd)
    return figures


def table(runtimes: list[str], runs: dict[str, list[dict[str, float]]], rounds: int) -> str:
    names = [SHORT.get(runtime, runtime) for runtime in runtimes]
    header = ["figure", *(f"{name} (median)" for name in names)]
    paired = len(runtimes) == 2
    if paired:
        header.append(f"ratio {names[0]}/{names[1]} (paired median)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit in FIGURES:
        row = [label]
        for runtime in runtimes:
            median = statistics.median(run[key] for run in runs[runtime])
            row.append(f"{median:.0f} {unit}" if unit == "KiB" else f"{median:.1f} {unit}")
        if paired:
            ratio = statistics.median(
                a[key] / b[key] for a, b in zip(runs[runtimes[0]], runs[runtimes[1]], strict=True)
                if b[key]
            )
            row.append(f"{ratio:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    title = (f"Task lifecycle through containerd 1.6 + ctr, {rounds} interleaved rounds, "
             f"{os.cpu_count()} CPUs")
    return title + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20,
                        help="interleaved rounds; figures are medians, ratios paired per round")
    parser.add_argument("--runtime", action="append", dest="runtimes",
                        help=f"runtime to measure (repeatable; default {PYSHIM} and {RUNC_V2})")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    args = parser.parse_args()
    runtimes: list[str] = args.runtimes or [PYSHIM, RUNC_V2]
    reason = missing_requirements()
    if reason is not None:
        sys.exit(f"bench.lifecycle: {reason}")
    runs: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in runtimes}
    failures: dict[str, list[str]] = {runtime: [] for runtime in runtimes}
    wanted = args.warmup + args.rounds
    with private_containerd() as (containerd, rootfs):
        done = attempt = 0
        while done < wanted:
            if attempt >= 3 * wanted:
                sys.exit(f"bench.lifecycle: too many failed rounds: {failures}")
            # Alternate which runtime goes first, so neither always runs on a warmer cache.
            order = runtimes if attempt % 2 == 0 else list(reversed(runtimes))
            results: dict[str, dict[str, float]] = {}
            for runtime in order:
                try:
                    results[runtime] = one_round(containerd, runtime, rootfs, attempt)
                except (CtrError, RuntimeError) as error:
                    # A failed lifecycle is a finding, not a figure: the round is dropped for
                    # every runtime (ratios stay paired) and counted.
                    failures[runtime].append(str(error).splitlines()[-1] if str(error) else "")
                    print(f"{SHORT.get(runtime, runtime)}: round failed: {error}",
                          file=sys.stderr)
                    wait_for_no_shims(containerd)
                    break
            attempt += 1
            if len(results) != len(runtimes):
                continue
            if done >= args.warmup:
                for runtime, figures in results.items():
                    runs[runtime].append(figures)
            done += 1
            print(f"round {done}/{wanted} done", file=sys.stderr)
    print(table(runtimes, runs, args.rounds))
    for runtime, errors in failures.items():
        if errors:
            print(f"\n{SHORT.get(runtime, runtime)}: {len(errors)} failed round(s), dropped: "
                  + "; ".join(sorted(set(errors))))

if __name__ == "__main__":
    main()
