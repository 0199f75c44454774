"""Rootfs mounts: stacking engine `Mount`s (containerd's `CreateTaskRequest.rootfs`, converted
by the front end) onto `<bundle>/rootfs` with containerd's option semantics (mount(2), loop
devices, fuse helpers) and unmounting them again. Never decides *when* to mount (the process
layer does, for its front end); never unmounts outside the given target. Failures: MountError.

Modules: options (Mount, the option table, overlay compaction), loop, fuse, execute (mount(2),
stacking, rollback); unmounting is pyshim.umount's.
"""

from __future__ import annotations

from pyshim.mount.execute import mount_all, mount_all_async
from pyshim.mount.options import (
    MS_BIND,
    MS_DIRSYNC,
    MS_MANDLOCK,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_SYNCHRONOUS,
    MS_UNBINDABLE,
    Mount,
    MountError,
    MountSpec,
    compact_lowerdir,
    overlay_needs_compaction,
    parse_options,
)
from pyshim.umount import UnmountError, unmount_all, unmount_all_async

# The MS_* flags too: callers and tests read them as pyshim.mount.MS_*.
__all__ = [
    "MS_BIND",
    "MS_DIRSYNC",
    "MS_MANDLOCK",
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NODIRATIME",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_RELATIME",
    "MS_REMOUNT",
    "MS_SHARED",
    "MS_SLAVE",
    "MS_STRICTATIME",
    "MS_SYNCHRONOUS",
    "MS_UNBINDABLE",
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
