"""A container's cgroup: locating it, reading its files, and OOM events on the event loop.

Reads only: never creates, moves, limits or removes a cgroup (runc does). OOM events are
oom.py's; statistics in a front end's format are built on top (containerd's Metrics:
cgroup_metrics.py).
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "Cgroup",
    "CgroupGone",
    "CgroupMode",
    "CgroupNotFound",
    "cgroup_of_pid",
    "host_mode",
    "hugetlb_sizes",
    "parse_device",
    "parse_flat_keyed",
    "parse_mountinfo_v1",
    "parse_partitions",
    "parse_percpu",
    "parse_proc_cgroup",
    "parse_uint",
    "parse_value",
    "read_file",
    "read_value",
]

DEFAULT_ROOT = "/sys/fs/cgroup"
CGROUP2_SUPER_MAGIC = 0x63677270
UINT64_MAX = (1 << 64) - 1

# The process's own symbols include libc; ctypes.util.find_library would run ldconfig at
# every daemon start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int

# Larger than struct statfs on every Linux ABI (120 bytes on 64-bit); only f_type is read.
_STATFS_BUFFER = 256


class CgroupMode(Enum):
    V1 = "v1"  # legacy or hybrid hierarchy: containerd reports v1 metrics
    V2 = "v2"  # unified hierarchy at the root


class CgroupNotFound(Exception):
    """The process's cgroup could not be determined (process gone, file unreadable)."""


class CgroupGone(Exception):
    """The cgroup directory no longer exists (the container was deleted)."""


@dataclass(frozen=True)
class Cgroup:
    """Where a container's cgroup lives.

    v1: `paths` maps each controller (`memory`, `cpu`, `cpuacct`, `name=systemd`, …) to its
    absolute directory. v2: `path` is the one directory.
    """

    mode: CgroupMode
    paths: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    def __hash__(self) -> int:
        return hash((self.mode, tuple(sorted(self.paths.items())), self.path))


def check_result(result: int, what: str) -> int:
    """A libc call's result, or OSError from errno when it failed."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return result


def host_mode(root: str = DEFAULT_ROOT) -> CgroupMode:
    """V2 when `root` is a cgroup2 mount (unified host), else V1 (legacy or hybrid).

    Raises OSError if `root` cannot be examined.
    """
    buffer = ctypes.create_string_buffer(_STATFS_BUFFER)
    check_result(_libc.statfs(os.fsencode(root), buffer), root)
    # f_type is the first member, a machine word.
    f_type = ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF
    return CgroupMode.V2 if f_type == CGROUP2_SUPER_MAGIC else CgroupMode.V1


# --- locating the cgroup -------------------------------------------------------------------

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), text)


def parse_mountinfo_v1(text: str) -> dict[str, tuple[str, str]]:
    """cgroup v1 mounts from /proc/self/mountinfo: controller -> (mount point, mount root).

    Controllers are named as in /proc/<pid>/cgroup (`cpu`, `name=systemd`); the first mount of
    a hierarchy wins.
    """
    mounts: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, extra = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(extra) < 3 or extra[0] != "cgroup":
            continue
        for option in extra[2].split(","):
            mounts.setdefault(option, (_unescape(fields[4]), _unescape(fields[3])))
    return mounts


def _v1_directory(
    root: str, controller: str, path: str, mounts: Mapping[str, tuple[str, str]] | None
) -> str:
    if mounts is not None and controller in mounts:
        point, mount_root = mounts[controller]
        # A mount of a subtree (a container's view) shows paths below its own root.
        if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
            path = path[len(mount_root) :]
        return _join(point, path)
    return _join(root, controller.removeprefix("name="), path)


def _join(base: str, *parts: str) -> str:
    return os.path.join(base, *(part.strip("/") for part in parts if part.strip("/")))


def parse_proc_cgroup(
    text: str,
    mode: CgroupMode,
    root: str = DEFAULT_ROOT,
    mounts: Mapping[str, tuple[str, str]] | None = None,
) -> Cgroup:
    """A Cgroup from the text of /proc/<pid>/cgroup.

    v1: each `hierarchy:controllers:path` line gives `<root>/<controller>/<path>` for every
    comma-joined controller (or the mount point from `mounts`, see parse_mountinfo_v1); the
    hybrid `0::` line is ignored. v2: the `0::<path>` line gives `<root>/<path>`.
    """
    paths: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        if hierarchy == "0" and not controllers:
            unified = path
        elif mode is CgroupMode.V1:
            for controller in filter(None, controllers.split(",")):
                paths[controller] = _v1_directory(root, controller, path, mounts)
    if mode is CgroupMode.V2:
        if unified is None:
            raise CgroupNotFound("no cgroup v2 ('0::') entry in /proc/<pid>/cgroup")
        return Cgroup(mode=mode, path=_join(root, unified))
    if not paths:
        raise CgroupNotFound("no cgroup v1 controllers in /proc/<pid>/cgroup")
    return Cgroup(mode=mode, paths=paths)


def cgroup_of_pid(pid: int, root: str = DEFAULT_ROOT, mode: CgroupMode | None = None) -> Cgroup:
    """The cgroup of a live process; CgroupNotFound if it is gone or unreadable."""
    if mode is None:
        mode = host_mode(root)
    try:
        # Bytes, decoded here (also below): a text-mode file runs codecs' Python decoder
        # classes, copied into each shim daemon at its first read.
        with open(f"/proc/{pid}/cgroup", "rb") as file:
            text = file.read().decode()
    except OSError as exc:
        reason = "no such process" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise CgroupNotFound(f"cannot read the cgroup of pid {pid}: {reason}") from exc
    mounts = None
    if mode is CgroupMode.V1:
        try:
            with open("/proc/self/mountinfo", "rb") as file:
                mounts = parse_mountinfo_v1(file.read().decode())
        except OSError:
            mounts = None  # fall back to <root>/<controller>
    try:
        return parse_proc_cgroup(text, mode, root, mounts)
    except CgroupNotFound as exc:
        raise CgroupNotFound(f"pid {pid}: {exc}") from None


# --- file parsers (pure) --------------------------------------------------------------------


def parse_uint(text: str, max_value: int | None = None) -> int | None:
    """A uint64 from a cgroup value; `max` -> max_value; anything else unparsable -> None."""
    if text == "max":
        return max_value
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 <= value <= UINT64_MAX else None


def parse_value(text: str, max_value: int | None = None) -> int | None:
    """A single-value file (`memory.current`, `pids.max`, …); `max` becomes `max_value`."""
    return parse_uint(text.strip(), max_value)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.oom_control, memory.events, …)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and (value := parse_uint(parts[1])) is not None:
            out[parts[0]] = value
    return out


def parse_percpu(text: str) -> list[int]:
    """cpuacct.usage_percpu: space-separated nanoseconds, one per possible CPU."""
    return [value for part in text.split() if (value := parse_uint(part)) is not None]


def parse_partitions(text: str) -> dict[tuple[int, int], str]:
    """/proc/partitions -> {(major, minor): "/dev/<name>"} for naming blkio devices."""
    devices: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            devices.setdefault((int(parts[0]), int(parts[1])), "/dev/" + parts[3])
    return devices


def parse_device(text: str) -> tuple[int, int] | None:
    major, sep, minor = text.partition(":")
    if sep and major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return None


# --- reading cgroup files ------------------------------------------------------------------


def read_file(directory: str, name: str) -> str | None:
    """A cgroup file's text, or None when it (or its controller) is not there."""
    try:
        with open(os.path.join(directory, name), "rb") as file:
            return file.read().decode()
    except (OSError, UnicodeDecodeError):
        return None


def read_value(directory: str, name: str, max_value: int | None = None) -> int | None:
    text = read_file(directory, name)
    return None if text is None else parse_value(text, max_value)


_HUGETLB_FILE = re.compile(r"hugetlb\.(\d+[KMGT]?B)\.(\w+)")
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def hugetlb_sizes(directory: str, suffix: str) -> list[str]:
    """Page sizes (`2MB`, `1GB`) that have a hugetlb.<size>.<suffix> file, smallest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    sizes = {m[1] for n in names if (m := _HUGETLB_FILE.fullmatch(n)) and m[2] == suffix}

    def size_bytes(size: str) -> int:
        digits = size.rstrip("KMGTB")
        return int(digits) * _SIZE_UNITS[size[len(digits) :]]

    return sorted(sizes, key=size_bytes)
