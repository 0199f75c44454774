"""The shim's own log lines, in containerd's logfmt style (logrus text format):
`time="2026-11-22T20:11:47.123456789Z" level=info msg="…" key=value`.

Owns formatting only; where lines go (the bundle's `log` FIFO, stderr) is the front end's call.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TextIO

_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}
# logrus leaves a value bare only when it is made of these characters.
_BARE = re.compile(r"[A-Za-z0-9\-._/@^+]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: object) -> str:
    """A logfmt value: bare when safe, else double-quoted with Go %q-style escapes."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def rfc3339_nano(time_ns: int) -> str:
    """containerd's RFC3339NanoFixed: always nine fraction digits, UTC as Z."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class LogfmtFormatter(logging.Formatter):
    """Formats records as logfmt; `extra={"fields": {...}}` adds key=value pairs."""

    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        # rfc3339_nano, record.getMessage and a generator inlined: in a shim daemon forked
        # from the fork-server, each distinct Python function run copies pages of its code
        # (docs/memory.md); the output is the same.
        time_ns = getattr(record, "time_ns", None) or int(record.created * 1e9)
        seconds, nanos = divmod(time_ns, 1_000_000_000)
        message = str(record.msg)
        if record.args:
            message = message % record.args
        parts = [
            f'time="{time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))}.{nanos:09d}Z"',
            f"level={_LEVEL_NAMES.get(record.levelno, record.levelname.lower())}",
            f"msg={quote(message)}",
        ]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"error={quote(record.exc_info[1])}")
        fields = {**self.fields, **getattr(record, "fields", {})}
        for key, value in fields.items():
            parts.append(f"{key}={quote(value)}")
        return " ".join(parts)


def configure(
    stream: TextIO, *, level: int = logging.INFO, fields: Mapping[str, object] | None = None
) -> logging.Handler:
    """Send every pyshim logger's records to stream as logfmt lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(fields))
    return install(handler, level=level)


def install(handler: logging.Handler, *, level: int = logging.INFO,
            root: logging.Logger | None = None) -> logging.Handler:
    """Make `handler` (made by the caller, maybe long before) the only one of every pyshim
    logger (`root`: the "pyshim" logger, if the caller has it already), at `level`."""
    if root is None:
        root = logging.getLogger("pyshim")
    root.handlers[:] = [handler]
    if root.level != level:  # setLevel walks every logger (clearing caches) even if unchanged
        root.setLevel(level)
    root.propagate = False
    return handler
