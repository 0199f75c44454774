"""A CRI log file read back the way kubelet reads it (pkg/kubelet/kuberuntime/logs parseCRILog),
for tests: strict, so any record kubelet would reject or misread fails loudly here.

Reads only; knows nothing of pyshim.logs beyond the file format.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from pathlib import Path

# time.RFC3339Nano as Go's time.Parse takes it: the fraction is optional, 1 to 9 digits; the zone
# is Z or a numeric offset with a colon.
_TIMESTAMP = re.compile(
    rb"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:(Z)|([+-])(\d\d):(\d\d))"
)
_STREAMS = {b"stdout": "stdout", b"stderr": "stderr"}


@dataclass(frozen=True)
class Record:
    time_ns: int  # since the epoch, UTC
    stream: str  # "stdout" or "stderr"
    partial: bool  # P (True) or F
    content: bytes  # as kubelet returns it: F records end in the `\n` it appends
    raw_timestamp: bytes


def parse_timestamp(text: bytes) -> int:
    """Nanoseconds since the epoch of an RFC3339Nano timestamp; ValueError if it is not one."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC3339Nano timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        raise ValueError(f"timestamp out of range: {text!r}")
    fraction = match[7] or b""
    nanos = int(fraction.ljust(9, b"0")) if fraction else 0
    offset = 0
    if match[8] is None:
        off_hours, off_minutes = int(match[10]), int(match[11])
        if off_hours > 23 or off_minutes > 59:
            raise ValueError(f"zone offset out of range: {text!r}")
        offset = (off_hours * 60 + off_minutes) * 60 * (-1 if match[9] == b"-" else 1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    return seconds * 1_000_000_000 + nanos


def parse_line(line: bytes) -> Record:
    """One record; `line` includes its terminating `\\n`. ValueError when malformed."""
    if not line.endswith(b"\n"):
        raise ValueError("record not terminated by a newline")
    timestamp, sep, rest = line.partition(b" ")
    if not sep:
        raise ValueError("timestamp is not found")
    time_ns = parse_timestamp(timestamp)
    stream, sep, rest = rest.partition(b" ")
    if not sep:
        raise ValueError("stream type is not found")
    if stream not in _STREAMS:
        raise ValueError(f"unexpected stream type {stream!r}")
    tags, sep, content = rest.partition(b" ")
    if not sep:
        raise ValueError("log tag is not found")
    tag = tags.split(b":")[0]
    if tag not in (b"P", b"F"):
        raise ValueError(f"unexpected log tag {tag!r}")
    partial = tag == b"P"
    if partial:
        content = content[:-1]  # kubelet trims the newline the writer added to a P record
    return Record(time_ns, _STREAMS[stream], partial, content, timestamp)


def parse(data: bytes) -> list[Record]:
    """Every record of a log file's bytes; ValueError naming the (1-based) line number."""
    records = []
    # Not splitlines(): that also splits at \r, \x0b, \x1c…; kubelet splits at \n only.
    lines = data.split(b"\n")
    last = lines.pop()
    for number, line in enumerate(lines, 1):
        try:
            records.append(parse_line(line + b"\n"))
        except ValueError as err:
            raise ValueError(f"line {number}: {err}: {line[:200]!r}") from None
    if last:
        raise ValueError(f"line {len(lines) + 1}: record not terminated by a newline: {last!r}")
    return records


def read(path: str | Path) -> list[Record]:
    return parse(Path(path).read_bytes())


def streams(records: list[Record]) -> dict[str, bytes]:
    """Each stream's bytes as kubelet hands them to `kubectl logs` (P records concatenated)."""
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    for record in records:
        out[record.stream] += record.content
    return {name: bytes(data) for name, data in out.items()}
