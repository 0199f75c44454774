"""`pyshim-conmon --version` wall time (podman runs it before every command), median of N runs,
beside conmon's own when it is installed, and the Python path (`--version` among other options).

Usage: python -m bench.conmon_version [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from pathlib import Path

WRAPPER = str(Path(__file__).resolve().parents[1] / "bin" / "pyshim-conmon")


def median_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def figures(runs: int) -> dict[str, float]:
    """Median milliseconds per command line measured."""
    result = {
        "pyshim-conmon --version": median_ms([WRAPPER, "--version"], runs),
        "pyshim-conmon --version --syslog (Python)": median_ms(
            [WRAPPER, "--version", "--syslog"], runs),
    }
    conmon = shutil.which("conmon")
    if conmon:
        result["conmon --version"] = median_ms([conmon, "--version"], runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    for command, ms in figures(args.runs).items():
        print(f"{command:45s} {ms:6.2f} ms (median of {args.runs})")


if __name__ == "__main__":
    main()
