"""`loads` on CPython's C JSON scanner alone, for the commands whose start-up is measured
(`start`, `delete`): importing `json` costs ~5 ms, most of it `re` for the pure-Python
fallback scanner that the C one makes useless. Same results as `json.loads` for str input.
"""

from __future__ import annotations

import _json

_WHITESPACE = " \t\n\r"


class _Options:
    # The attributes the C scanner reads once, as json.JSONDecoder() has them by default.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_Options())  # type: ignore[arg-type]  # reads these attributes


def loads(text: str | bytes) -> object:
    """The value of the JSON document `text`; ValueError if it is not exactly one."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as stop:
        raise ValueError(f"no JSON value at offset {stop.value}") from None
    except SystemError:
        # A malformed document inside a value: the C scanner reports it through
        # json.decoder.JSONDecodeError, found only if `json` is imported, and otherwise fails
        # without an exception. The error path can afford the import (and gets its message).
        import json

        return json.loads(text)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value
