"""`delete`: clean up after a shim containerd cannot talk to, and report the init's exit.

Idempotent and lean (no asyncio, no protobuf): `runc delete --force`, unmount the rootfs,
remove a dead shim's socket, print a raw DeleteResponse. Reports the exit status the daemon
recorded in the bundle when there is one (runc-v2 always says 137).

containerd 1.6 runs `delete` after every task, also after a clean Delete and Shutdown. A daemon
whose own Delete of the init did all of the above leaves the reply in `<bundle>/delete.reply`
(`record_clean_delete`); the launcher (bin/pyshim) prints that file without starting Python
once the daemon's socket is gone too.
"""

from __future__ import annotations

import os
import sys
import time

from pyshim.bundle import (
    DELETE_REPLY,
    CorruptRecord,
    ExitRecord,
    exit_record_path,
    read_exit_record,
    read_pid,
    runc_location,
    write_atomically,
)
from pyshim.identifiers import InvalidIdentifier, validate
from pyshim.shim import wire
from pyshim.shim.args import ShimArgs
from pyshim.shim.start import lock_path, socket_alive

KILLED_STATUS = 128 + 9


def _runc_delete(bundle: str, namespace: str, container_id: str) -> None:
    binary, root = runc_location(bundle, namespace)
    argv = [
        binary, "--root", root,
        "--log", os.path.join(bundle, "log.json"), "--log-format", "json",
        "delete", "--force", container_id,
    ]
    try:
        pid = os.posix_spawnp(argv[0], argv, dict(os.environ))
    except OSError as error:
        print(f"runc delete --force {container_id}: {error}", file=sys.stderr)
        return
    _, status = os.waitpid(pid, 0)
    # "does not exist" (already deleted by the daemon) is the usual, harmless failure.
    if status and not os.path.isdir(os.path.join(root, container_id)):
        return
    if status:
        print(f"runc delete --force {container_id} failed (status {status})", file=sys.stderr)


def _remove_dead_socket(bundle: str) -> None:
    try:
        with open(os.path.join(bundle, "address"), encoding="utf-8") as address_file:
            path = address_file.read().strip().removeprefix("unix://")
    except OSError:
        return
    # Only a socket nobody serves any more: a grouped shim that is alive keeps its socket.
    if path.startswith("/") and os.path.exists(path) and not socket_alive(path):
        for dead in (path, lock_path(path)):
            try:  # noqa: SIM105 (not contextlib: delete's imports are timed too)
                os.unlink(dead)
            except OSError:
                pass


def delete(args: ShimArgs) -> int:
    if not args.id:
        print("shim id cannot be empty", file=sys.stderr)
        return 1
    try:
        validate(args.id, "shim id")
        validate(args.namespace, "namespace")
    except InvalidIdentifier as error:
        print(f"delete: {error}", file=sys.stderr)
        return 1
    bundle = args.bundle or os.getcwd()
    _runc_delete(bundle, args.namespace, args.id)
    from pyshim.umount import unmount_all

    try:
        unmount_all(os.path.join(bundle, "rootfs"))
    except OSError as error:
        print(f"unmounting {bundle}/rootfs: {error}", file=sys.stderr)
    _remove_dead_socket(bundle)
    try:
        record = read_exit_record(exit_record_path(bundle))
    except CorruptRecord as error:
        # Reported, never trusted: containerd logs our stderr.
        print(f"container {args.id}: ignoring a corrupt exit record: {error}", file=sys.stderr)
        record = None
    sys.stdout.buffer.write(_reply(bundle, record))
    sys.stdout.buffer.flush()
    return 0


def _reply(bundle: str, record: ExitRecord | None) -> bytes:
    """The DeleteResponse: the init's pid, and its recorded exit (else 137, now)."""
    try:
        pid = read_pid(os.path.join(bundle, "init.pid"))
    except (OSError, ValueError):
        pid = 0  # Create never got that far
    status, exited_at = KILLED_STATUS, time.time_ns()
    if record is not None:
        status, exited_at = record.status, record.exited_at_ns
    return wire.encode_delete_response(pid, status, exited_at // 1_000_000_000,
                                       exited_at % 1_000_000_000)


def record_clean_delete(bundle: str) -> bool:
    """In the daemon, once its Delete of the init removed runc's state and unmounted the
    rootfs: write the reply `delete` would print to `<bundle>/delete.reply`. Only with a
    sound exit record (else `delete` itself decides); False when none was written."""
    try:
        record = read_exit_record(exit_record_path(bundle))
    except CorruptRecord:
        return False
    if record is None:
        return False
    try:
        write_atomically(os.path.join(bundle, DELETE_REPLY), _reply(bundle, record), 0o600)
    except OSError:
        return False
    return True
