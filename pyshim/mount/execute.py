"""Mounting and rollback: mount(2) through libc, components stacked in order inside the
target (symlinks scoped), and everything undone newest first on failure or cancellation.
Never unmounts outside what it mounted itself in this call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from pyshim.mount.fuse import mount_fuse
from pyshim.mount.loop import attach_loop
from pyshim.mount.options import (
    MS_BIND,
    MS_RDONLY,
    MS_REMOUNT,
    Mount,
    MountError,
    compact_lowerdir,
    os_reason,
    overlay_needs_compaction,
    parse_options,
)
from pyshim.umount import UnmountError, go_strerror, unmount_steps

_log = logging.getLogger("pyshim.mount")

# The process's own symbols include libc; ctypes.util.find_library would run ldconfig.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int


def _encode(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _sys_mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    if _libc.mount(_encode(source), os.fsencode(target), _encode(fstype), flags, _encode(data)):
        err = ctypes.get_errno()
        raise OSError(err, go_strerror(err), target)


@contextlib.contextmanager
def _working_directory(path: str | None) -> Iterator[None]:
    """chdir for the duration of a mount call; the previous cwd comes back even if renamed."""
    if path is None:
        yield
        return
    previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(path)
        try:
            yield
        finally:
            os.fchdir(previous)
    finally:
        os.close(previous)


def _scoped_join(root: str, unsafe: str) -> str:
    """root/unsafe with symlinks and '..' resolved as if root were '/', so nothing escapes it."""
    pending = deque(part for part in unsafe.split("/") if part not in ("", "."))
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.popleft()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > 255:
            raise OSError(errno.ELOOP, go_strerror(errno.ELOOP), candidate)
        link = os.readlink(candidate)
        if link.startswith("/"):
            resolved = []
        pending.extendleft(reversed([p for p in link.split("/") if p not in ("", ".")]))
    return os.path.join(root, *resolved)


def _mount_one(mount: Mount, target: str) -> None:
    """Mount one component; on failure nothing of it stays mounted."""
    if mount.type.startswith(("fuse.", "fuse3.")):
        mount_fuse(mount, target)
        return
    page_size = os.sysconf("SC_PAGE_SIZE")
    options: Sequence[str] = mount.options
    chdir: str | None = None
    if mount.type == "overlay" and overlay_needs_compaction(options, page_size):
        chdir, options = compact_lowerdir(options)
    spec = parse_options(options)
    if len(spec.data) > page_size:
        raise MountError(
            mount.type,
            mount.source,
            target,
            f"mount options are too long ({len(spec.data)} bytes, limit {page_size})",
        )
    source = mount.source
    loop_fd: int | None = None
    if spec.loop:
        try:
            loop_fd, source = attach_loop(source, read_only=bool(spec.flags & MS_RDONLY))
        except OSError as exc:
            reason = f"cannot set up a loop device: {os_reason(exc)}"
            raise MountError(mount.type, mount.source, target, reason, exc.errno) from exc
    mounted = False
    try:
        # A plain remount without data only changes flags, which the calls below do.
        if not spec.flags & MS_REMOUNT or spec.data:
            with _working_directory(chdir):
                _sys_mount(source, target, mount.type, spec.flags, spec.data or None)
            mounted = True
        if spec.propagation:
            _sys_mount(None, target, None, spec.propagation, None)
        if spec.flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY:
            # MS_RDONLY is ignored on the initial bind; a remount applies it (keeping the other
            # flags, which the kernel would otherwise refuse to drop for locked mounts).
            _sys_mount(None, target, None, spec.flags | MS_REMOUNT, None)
    except OSError as exc:
        if mounted:
            _unmount_quietly(target)
        raise MountError(mount.type, mount.source, target, os_reason(exc), exc.errno) from exc
    finally:
        if loop_fd is not None:
            os.close(loop_fd)


def _mount_each(mounts: Sequence[Mount], target: str, done: list[str]) -> None:
    """Mount in order, appending each place mounted on to `done` (for the caller's rollback)."""
    for mount in mounts:
        try:
            where = _scoped_join(target, mount.target) if mount.target else target
        except OSError as exc:
            raise MountError(mount.type, mount.source, target, os_reason(exc), exc.errno) from exc
        _mount_one(mount, where)
        done.append(where)


def mount_all(mounts: Sequence[Mount], target: str) -> None:
    """Stack `mounts` onto `target` in order (Mount.target, if set, is relative to `target`).

    On failure everything already mounted is unmounted again, newest first, and MountError is
    raised. Changes the process cwd briefly for long overlay option strings. Blocks (a fuse
    helper for up to a minute): on an event loop, use mount_all_async.
    """
    done: list[str] = []
    try:
        _mount_each(mounts, target, done)
    except BaseException:
        for where in reversed(done):
            _unmount_quietly(where)
        raise


async def mount_all_async(mounts: Sequence[Mount], target: str) -> None:
    """mount_all for the event loop: the loop keeps running while mount(2) calls and fuse
    helpers take their time, and a cancelled caller leaves nothing mounted.

    The mounting runs in a thread of its own with a private cwd (unshare(CLONE_FS)), so the
    overlay chdir never moves the loop thread's cwd (nor the other way round). Rollback (after
    a failure or a cancellation) runs on the loop; busy retries wait with asyncio.sleep.
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    done: list[str] = []

    def settle(error: BaseException | None) -> None:
        if finished.done():
            return
        if error is None:
            finished.set_result(None)
        else:
            finished.set_exception(error)

    def work() -> None:
        error: BaseException | None = None
        try:
            _private_cwd()
            _mount_each(mounts, target, done)
        except BaseException as exc:  # handed to the awaiting coroutine
            error = exc
        # RuntimeError: the loop is closed; nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=work, name=f"mount {target}", daemon=True).start()
    try:
        await asyncio.shield(finished)
    except asyncio.CancelledError:
        # A mount(2) or helper cannot be stopped midway: let the thread finish, then undo it.
        while not finished.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([finished])
        if not finished.cancelled():
            finished.exception()  # retrieved: the caller asked for cancellation, not this
        await _rollback_async(done)
        raise
    except BaseException:
        await _rollback_async(done)
        raise


async def _rollback_async(done: list[str]) -> None:
    """Unmount `done`, newest first; a cancellation meanwhile is honoured only once done."""
    cancelled = False
    for where in reversed(done):
        try:
            for delay in unmount_steps(where, once=True):
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    cancelled = True
        except UnmountError as exc:
            _log.warning("rollback: %s", exc)
    if cancelled:
        raise asyncio.CancelledError


_CLONE_FS = 0x200
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int


def _private_cwd() -> None:
    """Give the calling thread its own cwd (and root and umask): chdir there moves no other
    thread's cwd. Only for a thread that ends afterwards."""
    if _libc.unshare(_CLONE_FS):
        err = ctypes.get_errno()
        # Only long overlay option strings chdir; everything else works the same without.
        _log.warning("unshare(CLONE_FS): %s; the mount thread shares the process cwd",
                     go_strerror(err))


def _unmount_quietly(target: str) -> None:
    try:
        for delay in unmount_steps(target, once=True):
            time.sleep(delay)
    except UnmountError as exc:
        _log.warning("rollback: %s", exc)
