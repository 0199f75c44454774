"""Rootfs mounts: stacking engine `Mount`s (containerd's `CreateTaskRequest.rootfs`, converted
by the front end) onto `<bundle>/rootfs` with containerd's option semantics (mount(2), loop
devices, fuse helpers) and unmounting them again. Never decides *when* to mount (the process
layer does, for its front end); never unmounts outside the given target. Failures: MountError.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import posixpath
import re
import stat
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pyshim.errors import EngineError
from pyshim.umount import UnmountError, go_strerror, unmount_all, unmount_all_async, unmount_steps

__all__ = [
    "Mount",
    "MountError",
    "MountSpec",
    "UnmountError",
    "compact_lowerdir",
    "mount_all",
    "mount_all_async",
    "overlay_needs_compaction",
    "parse_options",
    "unmount_all",
    "unmount_all_async",
]

_log = logging.getLogger("pyshim.mount")

# <linux/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

# option -> (clear instead of set, flag); the §5.5 table.
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "bind": (False, MS_BIND),
    "rbind": (False, MS_BIND | MS_REC),
    "nosuid": (False, MS_NOSUID),
    "suid": (True, MS_NOSUID),
    "nodev": (False, MS_NODEV),
    "dev": (True, MS_NODEV),
    "noexec": (False, MS_NOEXEC),
    "exec": (True, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS),
    "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC),
    "remount": (False, MS_REMOUNT),
    "mand": (False, MS_MANDLOCK),
    "nomand": (True, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "atime": (True, MS_NOATIME),
    "nodiratime": (False, MS_NODIRATIME),
    "diratime": (True, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME),
    "norelatime": (True, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "defaults": (False, 0),
}
_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# containerd compacts overlay lowerdirs this far below the one-page limit of mount(2)'s data.
_OVERLAY_MARGIN = 512
_FUSE_HELPER_TIMEOUT = 60.0

# <linux/loop.h>
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: device, inode, rdevice, offset, sizelimit; number, encrypt_type,
# encrypt_key_size, flags; file_name[64], crypt_name[64], encrypt_key[32]; init[2].
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# Another process may take the free device between GET_FREE and SET_FD.
_LOOP_ATTEMPTS = 16

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


@dataclass(frozen=True, slots=True)
class Mount:
    """One rootfs component, as containerd's Mount describes it (the front end converts).

    `target`, if set, is relative to the directory the components are stacked on.
    """

    type: str
    source: str
    target: str = ""
    options: Sequence[str] = ()


@dataclass(frozen=True)
class MountSpec:
    """What a Mount's options mean to mount(2).

    `flags` go to the main mount call; `propagation` (MS_SHARED/… possibly with MS_REC) needs a
    second call of its own; `loop` asks for `source` to be attached to a loop device first.
    """

    flags: int
    data: str
    propagation: int
    loop: bool


class MountError(EngineError):
    """A rootfs component could not be mounted (anything mounted before it is rolled back)."""

    def __init__(
        self, mount_type: str, source: str, target: str, reason: str, err: int | None = None
    ) -> None:
        super().__init__(
            f"failed to mount rootfs component {mount_type} {source} on {target}: {reason}",
            cause=reason,
        )
        self.mount_type = mount_type
        self.source = source
        self.target = target
        self.reason = reason
        self.errno = err


def _os_reason(exc: OSError) -> str:
    if exc.errno and exc.strerror == os.strerror(exc.errno):
        return go_strerror(exc.errno)
    return exc.strerror or str(exc)


def parse_options(options: Sequence[str]) -> MountSpec:
    """Translate Mount.options as containerd does; unknown options become mount data."""
    flags = 0
    propagation = 0
    loop = False
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION_OPTIONS:
            # mount(2) takes one propagation type per call, so the last one given wins.
            propagation = _PROPAGATION_OPTIONS[option]
        elif option == "loop":
            loop = True
        else:
            data.append(option)
    return MountSpec(flags=flags, data=",".join(data), propagation=propagation, loop=loop)


def overlay_needs_compaction(options: Sequence[str], page_size: int | None = None) -> bool:
    """Whether an overlay option list is close enough to a page to shorten its lowerdirs."""
    size = page_size if page_size is not None else os.sysconf("SC_PAGE_SIZE")
    return sum(len(option) + 1 for option in options) >= size - _OVERLAY_MARGIN


def compact_lowerdir(options: Sequence[str]) -> tuple[str | None, list[str]]:
    """(directory to chdir to, options) with the lowerdirs made relative to their common parent.

    Returns (None, options unchanged) when there is nothing to gain: no lowerdir, a single one,
    or no common parent other than "/".
    """
    prefix = "lowerdir="
    index = next((i for i, opt in enumerate(options) if opt.startswith(prefix)), -1)
    if index < 0:
        return None, list(options)
    dirs = options[index][len(prefix) :].split(":")
    if len(dirs) < 2:
        return None, list(options)
    common = posixpath.commonprefix(dirs)
    # The common string prefix may end inside a name (snapshots/1 vs snapshots/12): back up
    # to the containing directory.
    parent = posixpath.dirname(common).rstrip("/")
    if not parent.startswith("/"):
        return None, list(options)
    relative = [d[len(parent) + 1 :] for d in dirs]
    rest = [opt for i, opt in enumerate(options) if i != index]
    return parent + "/", [*rest, prefix + ":".join(relative)]


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


def _attach_loop(backing: str, read_only: bool) -> tuple[int, str]:
    """Attach `backing` to a free loop device with autoclear; returns (open loop fd, path).

    Autoclear detaches the device when its last user goes: the mount, or this fd if the mount
    fails. The caller closes the fd once the mount call has returned.
    """
    mode = os.O_RDONLY if read_only else os.O_RDWR
    backing_fd = os.open(backing, mode | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_LOOP_ATTEMPTS):
                index = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                path = f"/dev/loop{index}"
                loop_fd = os.open(path, mode | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(loop_fd, _LOOP_SET_FD, backing_fd)
                except OSError as exc:
                    os.close(loop_fd)
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0)
                name = os.fsencode(backing)[:63]
                info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
                try:
                    fcntl.ioctl(loop_fd, _LOOP_SET_STATUS64, info)
                except OSError:
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(loop_fd, _LOOP_CLR_FD, 0)
                    os.close(loop_fd)
                    raise
                return loop_fd, path
            raise OSError(errno.EBUSY, "no free loop device", "/dev/loop-control")
        finally:
            os.close(control)
    finally:
        os.close(backing_fd)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mounts_at(path: str) -> int:
    """How many mounts /proc/self/mountinfo lists at `path` (fuse helpers are checked by it)."""
    real = os.path.realpath(path)
    count = 0
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
                count += point == real
    return count


def _mount_fuse(mount: Mount, target: str) -> None:
    fuse3 = mount.type.startswith("fuse3.")
    helper = "mount.fuse3" if fuse3 else "mount.fuse"
    subtype = mount.type.split(".", 1)[1]
    args = [helper, mount.source, target]
    for option in mount.options:
        args += ["-o", option]
    args += ["-t", subtype]
    command = " ".join(args)
    before = _mounts_at(target)
    # Output goes to a file, not a pipe: a fuse daemon the helper leaves behind could hold a
    # pipe open forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=_FUSE_HELPER_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MountError(
                mount.type, mount.source, target, f"mount helper [{command}] failed: {exc}"
            ) from exc
        if result.returncode != 0:
            output.seek(0)
            text = output.read(4096).decode(errors="replace").strip()
            raise MountError(
                mount.type,
                mount.source,
                target,
                f"mount helper [{command}] failed: {text!r}: exit status {result.returncode}",
            )
    # The daemon's SIGCHLD reaper can take the helper's exit status first (subprocess then
    # reports 0), so success is judged by the mount table, not the status alone.
    if _mounts_at(target) <= before:
        raise MountError(
            mount.type, mount.source, target, f"mount helper [{command}] mounted nothing"
        )


def _mount_one(mount: Mount, target: str) -> None:
    """Mount one component; on failure nothing of it stays mounted."""
    if mount.type.startswith(("fuse.", "fuse3.")):
        _mount_fuse(mount, target)
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
            loop_fd, source = _attach_loop(source, read_only=bool(spec.flags & MS_RDONLY))
        except OSError as exc:
            reason = f"cannot set up a loop device: {_os_reason(exc)}"
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
        raise MountError(mount.type, mount.source, target, _os_reason(exc), exc.errno) from exc
    finally:
        if loop_fd is not None:
            os.close(loop_fd)


def _mount_each(mounts: Sequence[Mount], target: str, done: list[str]) -> None:
    """Mount in order, appending each place mounted on to `done` (for the caller's rollback)."""
    for mount in mounts:
        try:
            where = _scoped_join(target, mount.target) if mount.target else target
        except OSError as exc:
            raise MountError(mount.type, mount.source, target, _os_reason(exc), exc.errno) from exc
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



