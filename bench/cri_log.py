"""Throughput of the CRI log writer (pyshim.logs.CriLogWriter) on its own: no pipes, no event
loop, just write() calls with prepared chunks into a file in a temporary directory.

Cases:

* short lines: 80-byte lines in 64 KiB chunks cut anywhere (lines straddle chunks);
* conmon chunks: the same lines in 8 KiB chunks, buffer_lines=False (conmon's §8.2.2 split);
* long lines: 1 MiB lines in 64 KiB chunks, cut into 16 KiB P records;
* line per write: one 80-byte line per write() call (one syscall each);
* size-capped: short lines with max_size=1 MiB (record-by-record accounting, truncations).

Figures: input lines/s and input MB/s (MB = 10^6 bytes) over the best of --repeat runs, from
the first write to close() (which fsyncs). Usage: python -m bench.cri_log [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyshim.logs import CriLogWriter


@dataclass
class Case:
    name: str
    chunks: list[bytes]
    lines: int
    options: dict[str, Any]


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def short_lines(count: int) -> bytes:
    line = b"%07d " + b"x" * 71 + b"\n"  # 80 bytes
    return b"".join(line % (index % 10**7) for index in range(count))


def cases(scale: float) -> list[Case]:
    lines = int(1_000_000 * scale)
    text = short_lines(lines)
    long_count = max(8, int(64 * scale))
    long_text = (b"y" * ((1 << 20) - 1) + b"\n") * long_count
    single = max(1000, lines // 5)
    return [
        Case("short lines, 64 KiB chunks", cut(text, 64 * 1024), lines, {}),
        Case("conmon: 8 KiB chunks, no buffer", cut(text, 8192), lines, {"buffer_lines": False}),
        Case("long lines (1 MiB), 64 KiB chunks", cut(long_text, 64 * 1024), long_count, {}),
        Case("one 80-byte line per write", cut(text[: single * 80], 80), single, {}),
        Case("short lines, max_size 1 MiB", cut(text, 64 * 1024), lines, {"max_size": 1 << 20}),
    ]


def run(case: Case, directory: str) -> tuple[float, int]:
    """Seconds to write and close, and bytes in the log file(s)."""
    path = os.path.join(directory, "bench.log")
    with open(path, "wb"):
        pass  # start from an empty file each run
    writer = CriLogWriter(path, **case.options)
    write = writer.write
    start = time.perf_counter()
    for chunk in case.chunks:
        write("stdout", chunk)
    writer.close()
    elapsed = time.perf_counter() - start
    return elapsed, writer.total


def table(rows: Iterable[tuple[str, ...]]) -> None:
    rows = list(rows)
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print(
            "  ".join(
                cell.ljust(widths[0]) if col == 0 else cell.rjust(widths[col])
                for col, cell in enumerate(row)
            )
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data, one run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (best is kept)")
    parser.add_argument("--dir", default=None, help="where the log file goes (default: $TMPDIR)")
    args = parser.parse_args()
    scale, repeat = (0.1, 1) if args.quick else (1.0, args.repeat)
    rows = [("case", "lines", "input MB", "s", "lines/s", "MB/s", "log MB")]
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for case in cases(scale):
            size = sum(map(len, case.chunks))
            best, written = min(run(case, directory) for _ in range(repeat))
            rows.append(
                (
                    case.name,
                    f"{case.lines:,}",
                    f"{size / 1e6:.1f}",
                    f"{best:.3f}",
                    f"{case.lines / best:,.0f}",
                    f"{size / 1e6 / best:,.0f}",
                    f"{written / 1e6:.1f}",
                )
            )
    table(rows)


if __name__ == "__main__":
    main()
