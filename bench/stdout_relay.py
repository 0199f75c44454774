"""Stdout relay throughput through a real containerd 1.6: pyshim (io.containerd.pyshim.v1)
against the Go reference (io.containerd.runc.v2), both driven by ``ctr`` on one private
containerd.

Each run is ``ctr run --rm … <cmd>`` with ctr attached (no ``-d``), its stdin on /dev/null and
its stdout a file opened on /dev/null (not a pipe read by Python), so the bytes go
container → pipe → shim → FIFO → ctr → /dev/null and the shim's relay is what differs between
the runtimes. Per round and runtime (rounds interleave the runtimes, order alternating):

* baseline: wall time of ``ctr run --rm … /bin/true`` (start-up and tear-down, no output);
* bulk: wall time of ``ctr run --rm … /bin/dd if=/dev/zero bs=1048576 count=N`` (``--size-mib``);
* lines: wall time of ``ctr run --rm … /bin/seq 1 N`` (``--lines``; busybox seq writes
  4 KiB blocks, so the relay sees a CPU-bound writer trickling small writes).

"raw" rates divide by the whole wall time, "net" rates by the wall time minus that round's
baseline of the same runtime (the relay, not start-up). MB = 10^6 bytes. Figures are medians
over the rounds; ratios are pyshim/runc-v2, paired per round, then the median (for a rate a
ratio below 1 means pyshim is slower, for a time above 1).

Before the measured rounds one unmeasured verification round (also a warm-up) sends each
runtime's bulk and lines output to a file and checks it byte for byte, so a relay that drops
output cannot produce a fast figure. Any failed run aborts the benchmark (exit status 1).
Needs root, containerd, ctr, runc and /bin/busybox; everything it starts is stopped and removed
at the end, also on Ctrl-C.

Usage: python -m bench.stdout_relay [--rounds N] [--size-mib M] [--lines L] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    PYSHIM,
    RUNC_V2,
    SHORT,
    missing_requirements,
    private_containerd,
    wait_for_no_shims,
)
from tests.e2e.conftest import SHIM_BIN_DIR, ctr_argv
from tests.e2e.containerd import PrivateContainerd

RUNTIMES = [PYSHIM, RUNC_V2]
SHIM_BINARY = SHIM_BIN_DIR / "containerd-shim-pyshim-v1"
MIB = 1 << 20

DEFAULT_ROUNDS = 5
DEFAULT_SIZE_MIB = 512
DEFAULT_LINES = 2_000_000
QUICK_ROUNDS = 2
QUICK_SIZE_MIB = 256
QUICK_LINES = 1_000_000

#: (key, label, unit, format) of each figure, in table order.
FIGURES = [
    ("base_ms", "`ctr run --rm /bin/true` (baseline)", "ms", "{:.0f}"),
    ("bulk_s", "bulk: wall time", "s", "{:.2f}"),
    ("bulk_raw_mbs", "bulk: raw", "MB/s", "{:.0f}"),
    ("bulk_net_mbs", "bulk: net of baseline", "MB/s", "{:.0f}"),
    ("lines_s", "lines: wall time", "s", "{:.2f}"),
    ("lines_raw_lps", "lines: raw", "lines/s", "{:,.0f}"),
    ("lines_net_lps", "lines: net of baseline", "lines/s", "{:,.0f}"),
    ("lines_raw_mbs", "lines: raw", "MB/s", "{:.1f}"),
    ("lines_net_mbs", "lines: net of baseline", "MB/s", "{:.1f}"),
]


class BenchError(RuntimeError):
    """A run failed or produced wrong output: the benchmark stops."""


def seq_output(lines: int) -> bytes:
    """What ``seq 1 LINES`` prints."""
    return ("\n".join(map(str, range(1, lines + 1))) + "\n").encode() if lines > 0 else b""


def timed_run(
    containerd: PrivateContainerd,
    runtime: str,
    rootfs: Path,
    container_id: str,
    command: Sequence[str],
    *,
    stdout: Path | None,
    timeout: float,
    started: list[str],
) -> float:
    """Seconds ``ctr run --rm`` of ``command`` took, its stdout on ``stdout`` (/dev/null if
    None). A non-zero exit status or a timeout raises :class:`BenchError`; the shim is gone
    (waited for, untimed) when this returns.
    """
    argv = ctr_argv(containerd, "run", "--rm", "--runtime", runtime, "--rootfs", str(rootfs),
                    container_id, *command)
    target = os.devnull if stdout is None else stdout
    started.append(container_id)
    with open(target, "wb") as out, tempfile.TemporaryFile(dir=containerd.base_dir) as err:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            status = process.wait(timeout)
            elapsed = time.perf_counter() - start
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"{SHORT[runtime]}: {' '.join(command)}: ctr run did not end within {timeout:.0f} s"
            ) from None
        finally:
            if process.poll() is None:  # timeout or KeyboardInterrupt: stop ctr, by PID
                process.kill()
                process.wait()
        if status != 0:
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
            raise BenchError(
                f"{SHORT[runtime]}: {' '.join(command)}: ctr run exited with status {status}"
                + (f":\n{message}" if message else "")
            )
    try:
        wait_for_no_shims(containerd)
    except RuntimeError as error:
        raise BenchError(f"{SHORT[runtime]}: {error}") from None
    return elapsed


def check_zeros(path: Path, expected: int, what: str) -> None:
    size = path.stat().st_size
    if size != expected:
        raise BenchError(f"{what}: wrote {size} bytes to stdout, expected {expected}")
    with open(path, "rb") as file:
        while chunk := file.read(MIB):
            if chunk.count(0) != len(chunk):
                raise BenchError(f"{what}: stdout is not all zero bytes")


def check_bytes(path: Path, expected: bytes, what: str) -> None:
    data = path.read_bytes()
    if len(data) != len(expected):
        raise BenchError(f"{what}: wrote {len(data)} bytes to stdout, expected {len(expected)}")
    if data != expected:
        raise BenchError(f"{what}: stdout has the right size but the wrong content")


def rate(amount: float, seconds: float) -> float:
    """amount / seconds, NaN when the time is not positive (net time lost in the noise)."""
    return amount / seconds if seconds > 0 else math.nan


def one_round(
    containerd: PrivateContainerd,
    runtime: str,
    rootfs: Path,
    index: int,
    args: argparse.Namespace,
    expected_lines: bytes,
    started: list[str],
    *,
    verify: bool,
) -> dict[str, float]:
    short = SHORT[runtime]
    cid = f"bench-relay-{short}-{os.getpid()}-{index}"
    bulk_bytes = args.size_mib * MIB
    bulk_cmd = ["/bin/dd", "if=/dev/zero", f"bs={MIB}", f"count={args.size_mib}"]
    lines_cmd = ["/bin/seq", "1", str(args.lines)]
    bulk_timeout = 120.0 + args.size_mib  # at least 1 MiB/s
    lines_timeout = 120.0 + args.lines / 5000
    out = containerd.base_dir / f"{cid}.stdout" if verify else None

    base_s = timed_run(containerd, runtime, rootfs, f"{cid}-true", ["/bin/true"],
                       stdout=None, timeout=120.0, started=started)
    bulk_s = timed_run(containerd, runtime, rootfs, f"{cid}-bulk", bulk_cmd,
                       stdout=out, timeout=bulk_timeout, started=started)
    if out is not None:
        check_zeros(out, bulk_bytes, f"{short}: {' '.join(bulk_cmd)}")
        out.unlink()
    lines_s = timed_run(containerd, runtime, rootfs, f"{cid}-lines", lines_cmd,
                        stdout=out, timeout=lines_timeout, started=started)
    if out is not None:
        check_bytes(out, expected_lines, f"{short}: {' '.join(lines_cmd)}")
        out.unlink()

    lines_bytes = len(expected_lines)
    bulk_net_s = bulk_s - base_s
    lines_net_s = lines_s - base_s
    return {
        "base_ms": base_s * 1000,
        "bulk_s": bulk_s,
        "bulk_raw_mbs": rate(bulk_bytes / 1e6, bulk_s),
        "bulk_net_mbs": rate(bulk_bytes / 1e6, bulk_net_s),
        "lines_s": lines_s,
        "lines_raw_lps": rate(args.lines, lines_s),
        "lines_net_lps": rate(args.lines, lines_net_s),
        "lines_raw_mbs": rate(lines_bytes / 1e6, lines_s),
        "lines_net_mbs": rate(lines_bytes / 1e6, lines_net_s),
    }


def finite_median(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else math.nan


def table(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace,
          lines_bytes: int) -> str:
    header = ["figure", *(SHORT[runtime] for runtime in RUNTIMES), "ratio"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label, unit, fmt in FIGURES:
        row = [f"{label} ({unit})"]
        for runtime in RUNTIMES:
            median = finite_median([run[key] for run in runs[runtime]])
            row.append("n/a" if math.isnan(median) else fmt.format(median))
        ratio = finite_median([
            a[key] / b[key]
            for a, b in zip(runs[PYSHIM], runs[RUNC_V2], strict=True)
            if b[key] and math.isfinite(a[key]) and math.isfinite(b[key])
        ])
        row.append("n/a" if math.isnan(ratio) else f"{ratio:.2f}")
        rows.append("| " + " | ".join(row) + " |")
    title = (
        f"Stdout relay through containerd 1.6 + `ctr run --rm` (attached, stdout on /dev/null), "
        f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs; "
        f"bulk = `dd if=/dev/zero bs=1M count={args.size_mib}` ({args.size_mib} MiB), "
        f"lines = `seq 1 {args.lines}` ({lines_bytes / 1e6:.1f} MB). "
        "Medians; ratio = pyshim/runc-v2, paired per round, median; MB = 10^6 bytes; "
        "net = minus the same round's baseline."
    )
    return title + "\n\n" + "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"measured interleaved rounds (default {DEFAULT_ROUNDS}, "
                             f"{QUICK_ROUNDS} with --quick)")
    parser.add_argument("--size-mib", type=int, default=None,
                        help=f"bulk output in MiB (default {DEFAULT_SIZE_MIB}, "
                             f"{QUICK_SIZE_MIB} with --quick)")
    parser.add_argument("--lines", type=int, default=None,
                        help=f"lines of `seq` output (default {DEFAULT_LINES}, "
                             f"{QUICK_LINES} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and 2 rounds, for a smoke run (explicit options win)")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.size_mib is None:
        args.size_mib = QUICK_SIZE_MIB if args.quick else DEFAULT_SIZE_MIB
    if args.lines is None:
        args.lines = QUICK_LINES if args.quick else DEFAULT_LINES
    for name in ("rounds", "size_mib", "lines"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def run(args: argparse.Namespace, expected_lines: bytes) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {runtime: [] for runtime in RUNTIMES}
    started: list[str] = []  # every container id tried, for the clean-up after a Ctrl-C
    with private_containerd(started) as (containerd, rootfs):
        for index in range(args.rounds + 1):
            verify = index == 0
            # Alternate which runtime goes first, so neither always runs on a warmer cache.
            order = RUNTIMES if index % 2 == 0 else list(reversed(RUNTIMES))
            for runtime in order:
                figures = one_round(containerd, runtime, rootfs, index, args, expected_lines,
                                    started, verify=verify)
                if not verify:
                    runs[runtime].append(figures)
            print("verification round: output checked" if verify
                  else f"round {index}/{args.rounds} done", file=sys.stderr)
    return runs


def main() -> None:
    try:
        args = parse_args()
        reason = missing_requirements()
        if reason is None and not os.access(SHIM_BINARY, os.X_OK):
            reason = f"{SHIM_BINARY} is missing or not executable"
        if reason is not None:
            sys.exit(f"bench.stdout_relay: {reason}")
        expected_lines = seq_output(args.lines)
        runs = run(args, expected_lines)
    except KeyboardInterrupt:
        print("bench.stdout_relay: interrupted; everything it started is stopped",
              file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, OSError) as error:  # BenchError, ContainerdError/CtrError, ...
        message = f"bench.stdout_relay: failed: {error}"
        if error.__context__ is not None:  # e.g. clean-up failed after a failed run
            message += f"\n(after: {error.__context__})"
        sys.exit(message)
    print(table(runs, args, len(expected_lines)))

if __name__ == "__main__":
    main()
