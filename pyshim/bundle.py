"""Files pyshim keeps in a container's bundle for `delete` and for people debugging.

`address`, `options.json` and `runtime` (where runc is, as runc-v2 writes them), `init.exit`
(the init's recorded exit, so `delete` reports the truth instead of 137), `shim.pid`, and the
pid files runc writes. Lean: `start` and `delete` import it. Writes are atomic (temp + rename).
"""

from __future__ import annotations

import os

from pyshim import jsonlite

ADDRESS = "address"
EXIT_RECORD = "init.exit"
SHIM_PID = "shim.pid"
OPTIONS = "options.json"
RUNTIME = "runtime"
DEFAULT_BINARY = "runc"
DEFAULT_ROOT = "/run/containerd/runc"


def _write_atomically(path: str, text: str, mode: int = 0o644) -> None:
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, "." + name)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def write_address(bundle: str, address: str) -> None:
    """<bundle>/address (containerd 1.6/1.7 read it back on restart)."""
    _write_atomically(os.path.join(bundle, ADDRESS), address)


def read_pid(path: str) -> int:
    """A pid file as runc writes it (decimal, maybe without newline); OSError/ValueError if
    it is missing or not a number."""
    with open(path, encoding="ascii") as pid_file:
        return int(pid_file.read().strip())


def write_exit_record(bundle: str, status: int, exited_at_ns: int) -> None:
    _write_atomically(
        os.path.join(bundle, EXIT_RECORD),
        f'{{"status": {int(status)}, "exited_at_ns": {int(exited_at_ns)}}}',
    )


def read_exit_record(bundle: str) -> tuple[int, int] | None:
    """(status, exited_at ns) the daemon wrote when it reaped the init, if it did."""
    try:
        with open(os.path.join(bundle, EXIT_RECORD), encoding="utf-8") as record:
            data = jsonlite.loads(record.read())
        return int(data["status"]), int(data["exited_at_ns"])  # type: ignore[index]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_shim_pid(bundle: str, pid: int) -> None:
    _write_atomically(os.path.join(bundle, SHIM_PID), str(pid))


def write_runtime_options(bundle: str, options_json: str, binary_name: str) -> None:
    """options.json (Go-style JSON of the runc Options) and runtime (the binary), mode 0600."""
    _write_atomically(os.path.join(bundle, OPTIONS), options_json, 0o600)
    _write_atomically(os.path.join(bundle, RUNTIME), binary_name, 0o600)


def read_runtime_options(bundle: str) -> dict[str, object]:
    """What write_runtime_options stored ({} when missing or unreadable)."""
    try:
        with open(os.path.join(bundle, OPTIONS), encoding="utf-8") as saved:
            data = jsonlite.loads(saved.read())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    try:
        with open(os.path.join(bundle, RUNTIME), encoding="utf-8") as runtime:
            binary = runtime.read().strip()
    except OSError:
        binary = ""
    if binary:
        data["binary_name"] = binary
    return data


def runc_location(bundle: str, namespace: str) -> tuple[str, str]:
    """(runc binary, runc --root) for a bundle's container, defaults filled in."""
    data = read_runtime_options(bundle)
    binary = data.get("binary_name")
    root = data.get("root")
    return (
        binary if isinstance(binary, str) and binary else DEFAULT_BINARY,
        os.path.join(root if isinstance(root, str) and root else DEFAULT_ROOT, namespace),
    )
