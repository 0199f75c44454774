"""Files pyshim keeps in a container's bundle for `delete` and for people debugging.

`address`, `options.json` and `runtime` (where runc is, as runc-v2 writes them), exit records
(`init.exit`, `execs/<exec id>.exit`: written when the process is reaped, so `delete` reports
the truth instead of 137 even after the shim died), `delete.reply`, `shim.pid`, and the pid
files runc writes.
Lean: `start` and `delete` import it. Writes are atomic (O_EXCL|O_NOFOLLOW temp + rename);
records are durable too (file and directory fsynced: at once, or by the caller later).
"""

from __future__ import annotations

import os
import time

from pyshim import jsonlite

ADDRESS = "address"
EXIT_RECORD = "init.exit"
#: What `delete` would print, left by a daemon whose own Delete of the init did everything
#: `delete` does; the launcher (bin/pyshim) prints it without starting Python.
DELETE_REPLY = "delete.reply"
EXECS = "execs"  # per-exec files: <exec id>.exit, .pid, .json (exec ids are validated first)
SHIM_PID = "shim.pid"
OPTIONS = "options.json"
RUNTIME = "runtime"
DEFAULT_BINARY = "runc"
DEFAULT_ROOT = "/run/containerd/runc"


def _write_atomically(path: str, text: str | bytes, mode: int = 0o644, *,
                      durable: bool = False) -> None:
    """Replace `path` with `text`; a reader sees the old file or the new one, never a mix.

    The temporary name is unique and created O_EXCL|O_NOFOLLOW: a file or symlink planted
    there makes the write fail instead of being followed or truncated.
    """
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{time.monotonic_ns()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, mode)
    try:
        try:
            data = text.encode() if isinstance(text, str) else text
            while data:
                data = data[os.write(fd, data):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:  # noqa: SIM105 (no contextlib: delete's imports are timed)
            os.unlink(temporary)
        except OSError:
            pass
        raise
    if durable:
        _fsync_path(directory or ".", os.O_DIRECTORY)


def _fsync_path(path: str, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(path: str) -> None:
    """fsync a file written by `_write_atomically` without `durable`, then its directory
    (for the rename): afterwards it is what `durable=True` would have left."""
    _fsync_path(path)
    _fsync_path(os.path.dirname(path) or ".", os.O_DIRECTORY)


#: Public for the conmon front end's exit files (same guarantees, its own modes).
write_atomically = _write_atomically


def write_address(bundle: str, address: str) -> None:
    """<bundle>/address (containerd 1.6/1.7 read it back on restart)."""
    _write_atomically(os.path.join(bundle, ADDRESS), address)


def read_pid(path: str) -> int:
    """A pid file as runc writes it (decimal, maybe without newline); OSError/ValueError if
    it is missing or not a number."""
    # Bytes, decoded here: a text-mode file runs codecs' Python decoder classes.
    with open(path, "rb") as pid_file:
        return int(pid_file.read().decode("ascii").strip())


class CorruptRecord(ValueError):
    """An exit record exists but cannot be trusted; the message says which and why."""


class ExitRecord:
    """A reaped process as the daemon recorded it (a plain class: dataclasses would cost
    `delete` 10 ms of imports)."""

    __slots__ = ("exited_at_ns", "oom", "pid", "status")

    def __init__(self, status: int, exited_at_ns: int, pid: int = 0, oom: bool = False) -> None:
        self.status = status
        self.exited_at_ns = exited_at_ns
        self.pid = pid
        self.oom = oom

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitRecord) and (
            (self.status, self.exited_at_ns, self.pid, self.oom)
            == (other.status, other.exited_at_ns, other.pid, other.oom))

    def __repr__(self) -> str:
        return (f"ExitRecord(status={self.status}, exited_at_ns={self.exited_at_ns}, "
                f"pid={self.pid}, oom={self.oom})")


def exec_dir(bundle: str) -> str:
    return os.path.join(bundle, EXECS)


def exit_record_path(bundle: str, exec_id: str | None = None) -> str:
    """init.exit for the init (exec_id None), execs/<exec id>.exit for an exec."""
    if exec_id is None:
        return os.path.join(bundle, EXIT_RECORD)
    return os.path.join(bundle, EXECS, exec_id + ".exit")


def write_exit_record(path: str, record: ExitRecord, *, durable: bool = True) -> None:
    """At reap time: a shim killed right after the exit still leaves the truth (written is
    enough for that: the kernel keeps it); `durable` also survives the host's crash, or call
    `make_durable(path)` later."""
    _write_atomically(
        path,
        f'{{"status": {int(record.status)}, "exited_at_ns": {int(record.exited_at_ns)}, '
        f'"pid": {int(record.pid)}, "oom": {"true" if record.oom else "false"}}}',
        durable=durable,
    )


def read_exit_record(path: str) -> ExitRecord | None:
    """The record at `path`; None when there is none, CorruptRecord when it is unusable."""
    try:
        with open(path, "rb") as record_file:
            raw = record_file.read(4096)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CorruptRecord(f"{path}: {error.strerror}") from error
    try:
        data = jsonlite.loads(raw.decode())
        if not isinstance(data, dict):
            raise TypeError("not an object")
        status, exited_at, pid = data["status"], data["exited_at_ns"], data.get("pid", 0)
        oom = data.get("oom", False)
        if not (isinstance(status, int) and 0 <= status <= 255 and isinstance(exited_at, int)
                and exited_at > 0 and isinstance(pid, int) and isinstance(oom, bool)):
            raise ValueError("fields out of range")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CorruptRecord(f"{path}: not an exit record ({error}): {raw[:80]!r}") from error
    return ExitRecord(status, exited_at, pid, oom)


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
