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
    os.environ both hold exactly `environment`.

    Only what differs is changed: a fork-server's children mostly get the environment it
    has already (containerd's), and each variable set or removed frees objects the
    fork-server made and allocates new ones, writing (copying) its pages in every child
    (~290 KiB per shim daemon, docs/memory.md). Variables kept keep their place in the
    iteration order (clear + update would order them as `environment` does).
    """
    wanted = {name.encode(_ENCODING, "surrogateescape"): value.encode(_ENCODING,
                                                                         "surrogateescape")
              for name, value in environment.items()}
    for key in [key for key in _TABLE if key not in wanted]:
        os.unsetenv(key)
        del _TABLE[key]
    for key, value in wanted.items():
        if _TABLE.get(key) != value:
            os.putenv(key, value)
            _TABLE[key] = value


def get(name: str) -> str | None:
    """`os.environ.get(name)`."""
    value = _TABLE.get(name.encode(_ENCODING, "surrogateescape"))
    return None if value is None else value.decode(_ENCODING, "surrogateescape")


def copy_without(excluded: str) -> dict[str, str]:
    """`{k: v for k, v in os.environ.items() if k != excluded}`."""
    excluded_key = excluded.encode(_ENCODING, "surrogateescape")
    return {key.decode(_ENCODING, "surrogateescape"): value.decode(_ENCODING, "surrogateescape")
            for key, value in _TABLE.items() if key != excluded_key}
