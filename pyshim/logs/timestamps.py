"""CRI log timestamps: RFC 3339 with nine fraction digits, UTC (containerd) or local (conmon).
Owns the formatting only; never reads the clock itself (callers pass nanoseconds).
"""

from __future__ import annotations

import time

# Not `from typing import TYPE_CHECKING`: typing costs milliseconds at start-up that the conmon
# front end does not otherwise pay; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    #: "utc" (containerd CRI, `…Z`) or "local" (conmon, `…+05:30`).
    TimestampStyle: TypeAlias = Literal["utc", "local"]


class Timestamper:
    """RFC 3339 timestamps with exactly nine fraction digits, as bytes, cached per second.

    "utc" gives `…T18:50:14.445719431Z` (containerd CRI, what kubelet expects); "local" gives
    conmon's `…T18:50:14.445719431+00:00`: the process's local zone (TZ as of the last
    time.tzset()), numeric offset with a colon, UTC as `+00:00`, DST changes honoured.
    """

    __slots__ = ("_local", "_prefix", "_second", "_suffix")

    def __init__(self, style: TimestampStyle = "utc") -> None:
        if style not in ("utc", "local"):
            raise ValueError(f"timestamp style must be 'utc' or 'local', not {style!r}")
        self._local = style == "local"
        self._second: int | None = None
        self._prefix = b""
        self._suffix = b""

    def __call__(self, time_ns: int) -> bytes:
        second, nanos = divmod(time_ns, 1_000_000_000)
        if second != self._second:
            self._load(second)
        return b"%s%09d%s" % (self._prefix, nanos, self._suffix)

    def _load(self, second: int) -> None:
        if self._local:
            tm = time.localtime(second)
            # Offsets of historical zones may carry seconds; RFC 3339 has minutes only.
            minutes = abs(tm.tm_gmtoff) // 60
            sign = "-" if tm.tm_gmtoff < 0 else "+"
            suffix = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        else:
            tm = time.gmtime(second)
            suffix = "Z"
        self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", tm).encode()
        self._suffix = suffix.encode()
        self._second = second


def format_timestamp(time_ns: int, style: TimestampStyle = "utc") -> str:
    """One CRI log timestamp (see Timestamper; use a Timestamper when formatting many)."""
    return Timestamper(style)(time_ns).decode()
