"""What a rootfs Mount means: the engine's Mount and MountError, containerd's option table
(spec §5.5) translated to mount(2) flags and data, and overlay lowerdir compaction. Pure: never
calls mount(2) nor touches the filesystem.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from pyshim.errors import EngineError
from pyshim.umount import go_strerror

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


def os_reason(exc: OSError) -> str:
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
