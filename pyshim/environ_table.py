"""os.environ read and replaced through its own table with built-in calls only.

os.environ is a MutableMapping written in Python: iterating, copying or replacing it runs
half a dozen Python functions per variable (collections.abc's mixins, os._Environ's methods,
the key and value codecs). In a shim daemon forked from the fork-server, every Python
function run copies the pages of its code and objects into that daemon's private memory; these
helpers give the same results with none of them.
"""

from __future__ import annotations

import os
import sys

#: os.environ's own table, bytes to bytes (what `os.environb` also reads), kept in step with
#: the C environment by os.environ; and the encoding os.environ decodes it with.
_TABLE: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
_ENCODING = sys.getfilesystemencoding()


def replace(environment: dict[str, str]) -> None:
    """What `os.environ.clear(); os.environ.update(environment)` does: the C environment and
    os.environ both hold exactly `environment`."""
    for key in list(_TABLE):
        os.unsetenv(key)
    _TABLE.clear()
    for name, value in environment.items():
        encoded_name = name.encode(_ENCODING, "surrogateescape")
        encoded_value = value.encode(_ENCODING, "surrogateescape")
        os.putenv(encoded_name, encoded_value)
        _TABLE[encoded_name] = encoded_value


def get(name: str) -> str | None:
    """`os.environ.get(name)`."""
    value = _TABLE.get(name.encode(_ENCODING, "surrogateescape"))
    return None if value is None else value.decode(_ENCODING, "surrogateescape")


def copy_without(excluded: str) -> dict[str, str]:
    """`{k: v for k, v in os.environ.items() if k != excluded}`."""
    excluded_key = excluded.encode(_ENCODING, "surrogateescape")
    return {key.decode(_ENCODING, "surrogateescape"): value.decode(_ENCODING, "surrogateescape")
            for key, value in _TABLE.items() if key != excluded_key}
