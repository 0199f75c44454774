"""Files pyshim keeps in a container's bundle for `delete` and for people debugging.

`init.exit` (the init's recorded exit, so `delete` reports the truth instead of 137) and
`shim.pid`. Lean: `delete` imports it. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import json
import os

EXIT_RECORD = "init.exit"
SHIM_PID = "shim.pid"


def _write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, "." + name)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def write_exit_record(bundle: str, status: int, exited_at_ns: int) -> None:
    _write_atomically(
        os.path.join(bundle, EXIT_RECORD),
        json.dumps({"status": status, "exited_at_ns": exited_at_ns}),
    )


def read_exit_record(bundle: str) -> tuple[int, int] | None:
    """(status, exited_at ns) the daemon wrote when it reaped the init, if it did."""
    try:
        with open(os.path.join(bundle, EXIT_RECORD), encoding="utf-8") as record:
            data = json.load(record)
        return int(data["status"]), int(data["exited_at_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_shim_pid(bundle: str, pid: int) -> None:
    _write_atomically(os.path.join(bundle, SHIM_PID), str(pid))
