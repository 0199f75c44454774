"""A container's cgroup: locating it, its Stats (io.containerd.cgroups.v1/v2 Metrics) and OOM
events on the event loop. Reads only: never creates, moves, limits or removes a cgroup (runc
does), and a failed OOM watch is logged, never allowed to fail a container.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cache

# Not typing.TYPE_CHECKING: see pyshim.logs (mypy honours any constant of this name).
TYPE_CHECKING = False
# The Metrics messages are imported where they are built: locating cgroups and watching them
# for OOM (all the conmon monitor needs) must not cost protobuf (~2.6 MiB of every daemon).
if TYPE_CHECKING:
    from google.protobuf import any_pb2
    from google.protobuf.message import Message

    from pyshim.protos.cgroups.v1 import metrics_pb2 as v1
    from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

__all__ = [
    "Cgroup",
    "CgroupGone",
    "CgroupMode",
    "CgroupNotFound",
    "OOMWatcher",
    "cgroup_of_pid",
    "host_mode",
    "metrics",
    "parse_blkio",
    "parse_flat_keyed",
    "parse_io_stat",
    "parse_mountinfo_v1",
    "parse_partitions",
    "parse_percpu",
    "parse_proc_cgroup",
    "parse_psi",
    "parse_value",
]

_log = logging.getLogger("pyshim.cgroups")

DEFAULT_ROOT = "/sys/fs/cgroup"
CGROUP2_SUPER_MAGIC = 0x63677270
UINT64_MAX = (1 << 64) - 1

# The process's own symbols include libc; ctypes.util.find_library would run ldconfig at
# every daemon start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
_libc.statfs.restype = ctypes.c_int
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int

# Larger than struct statfs on every Linux ABI (120 bytes on 64-bit); only f_type is read.
_STATFS_BUFFER = 256
_IN_MODIFY = 0x2


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


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return result


def host_mode(root: str = DEFAULT_ROOT) -> CgroupMode:
    """V2 when `root` is a cgroup2 mount (unified host), else V1 (legacy or hybrid).

    Raises OSError if `root` cannot be examined.
    """
    buffer = ctypes.create_string_buffer(_STATFS_BUFFER)
    _check(_libc.statfs(os.fsencode(root), buffer), root)
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
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        reason = "no such process" if isinstance(exc, FileNotFoundError) else exc.strerror
        raise CgroupNotFound(f"cannot read the cgroup of pid {pid}: {reason}") from exc
    mounts = None
    if mode is CgroupMode.V1:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as file:
                mounts = parse_mountinfo_v1(file.read())
        except OSError:
            mounts = None  # fall back to <root>/<controller>
    try:
        return parse_proc_cgroup(text, mode, root, mounts)
    except CgroupNotFound as exc:
        raise CgroupNotFound(f"pid {pid}: {exc}") from None


# --- file parsers (pure) --------------------------------------------------------------------


def _uint(text: str, max_value: int | None = None) -> int | None:
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
    return _uint(text.strip(), max_value)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, cpu.stat, memory.oom_control, memory.events, …)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and (value := _uint(parts[1])) is not None:
            out[parts[0]] = value
    return out


def parse_percpu(text: str) -> list[int]:
    """cpuacct.usage_percpu: space-separated nanoseconds, one per possible CPU."""
    return [value for part in text.split() if (value := _uint(part)) is not None]


def parse_partitions(text: str) -> dict[tuple[int, int], str]:
    """/proc/partitions -> {(major, minor): "/dev/<name>"} for naming blkio devices."""
    devices: dict[tuple[int, int], str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            devices.setdefault((int(parts[0]), int(parts[1])), "/dev/" + parts[3])
    return devices


def _device(text: str) -> tuple[int, int] | None:
    major, sep, minor = text.partition(":")
    if sep and major.isdigit() and minor.isdigit():
        return int(major), int(minor)
    return None


def parse_blkio(
    text: str, devices: Mapping[tuple[int, int], str] | None = None
) -> list[v1.BlkIOEntry]:
    """A v1 blkio file: `major:minor Op value` lines (or `major:minor value`); `Total` skipped."""
    from pyshim.protos.cgroups.v1 import metrics_pb2 as v1

    entries: list[v1.BlkIOEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (2, 3) or (device := _device(parts[0])) is None:
            continue
        if (value := _uint(parts[-1])) is None:
            continue
        entries.append(
            v1.BlkIOEntry(
                op=parts[1] if len(parts) == 3 else "",
                device=(devices or {}).get(device, ""),
                major=device[0],
                minor=device[1],
                value=value,
            )
        )
    return entries


def parse_io_stat(text: str) -> list[v2.IOEntry]:
    """v2 io.stat: `major:minor rbytes=… wbytes=… rios=… wios=… …` lines."""
    from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

    entries: list[v2.IOEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or (device := _device(parts[0])) is None:
            continue
        entry = v2.IOEntry(major=device[0], minor=device[1])
        for part in parts[1:]:
            key, _, raw = part.partition("=")
            if key in ("rbytes", "wbytes", "rios", "wios") and (value := _uint(raw)) is not None:
                setattr(entry, key, value)
        entries.append(entry)
    return entries


def parse_psi(text: str) -> v2.PSIStats:
    """A *.pressure file: `some|full avg10=… avg60=… avg300=… total=…` lines."""
    from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

    stats = v2.PSIStats()
    for line in text.splitlines():
        kind, *pairs = line.split()
        if kind not in ("some", "full"):
            continue
        data: v2.PSIData = getattr(stats, kind)
        for pair in pairs:
            key, _, raw = pair.partition("=")
            try:
                if key in ("avg10", "avg60", "avg300"):
                    setattr(data, key, float(raw))
                elif key == "total" and (value := _uint(raw)) is not None:
                    data.total = value
            except ValueError:
                continue
    return stats


# --- metrics ----------------------------------------------------------------------------------


def _read(directory: str, name: str) -> str | None:
    """A cgroup file's text, or None when it (or its controller) is not there."""
    try:
        with open(os.path.join(directory, name), encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_value(directory: str, name: str, max_value: int | None = None) -> int | None:
    text = _read(directory, name)
    return None if text is None else parse_value(text, max_value)


def _set_fields(
    message: Message, values: Mapping[str, int], names: Iterable[tuple[str, str]]
) -> bool:
    """Copy values[key] into message.<field> for each (key, field); True if any was set."""
    found = False
    for key, name in names:
        if key in values:
            setattr(message, name, values[key])
            found = True
    return found


_V1_MEMORY_STAT_KEYS = [
    ("cache", "cache"),
    ("rss", "rss"),
    ("rss_huge", "rss_huge"),
    ("mapped_file", "mapped_file"),
    ("dirty", "dirty"),
    ("writeback", "writeback"),
    ("pgpgin", "pg_pg_in"),
    ("pgpgout", "pg_pg_out"),
    ("pgfault", "pg_fault"),
    ("pgmajfault", "pg_maj_fault"),
    ("inactive_anon", "inactive_anon"),
    ("active_anon", "active_anon"),
    ("inactive_file", "inactive_file"),
    ("active_file", "active_file"),
    ("unevictable", "unevictable"),
]
_V1_MEMORY_KEYS = [
    *_V1_MEMORY_STAT_KEYS,
    ("hierarchical_memory_limit", "hierarchical_memory_limit"),
    ("hierarchical_memsw_limit", "hierarchical_swap_limit"),
    *((f"total_{key}", f"total_{name}") for key, name in _V1_MEMORY_STAT_KEYS),
]
# MemoryEntry field <- file suffix after the controller prefix.
_V1_MEMORY_ENTRY_FILES = [
    ("limit", "limit_in_bytes"),
    ("usage", "usage_in_bytes"),
    ("max", "max_usage_in_bytes"),
    ("failcnt", "failcnt"),
]
# BlkIOStat field <- files to try in order: the CFQ recursive statistics where the kernel has
# them (before 5.0), else the throttling layer's, which counts I/O under any scheduler.
_V1_BLKIO_FILES = [
    (
        "io_service_bytes_recursive",
        (
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes",
        ),
    ),
    (
        "io_serviced_recursive",
        (
            "blkio.io_serviced_recursive",
            "blkio.throttle.io_serviced_recursive",
            "blkio.throttle.io_serviced",
        ),
    ),
    ("io_queued_recursive", ("blkio.io_queued_recursive",)),
    ("io_service_time_recursive", ("blkio.io_service_time_recursive",)),
    ("io_wait_time_recursive", ("blkio.io_wait_time_recursive",)),
    ("io_merged_recursive", ("blkio.io_merged_recursive",)),
    ("io_time_recursive", ("blkio.time_recursive",)),
    ("sectors_recursive", ("blkio.sectors_recursive",)),
]
_HUGETLB_FILE = re.compile(r"hugetlb\.(\d+[KMGT]?B)\.(\w+)")
_SIZE_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def _hugetlb_sizes(directory: str, suffix: str) -> list[str]:
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


def _memory_entry_v1(directory: str, prefix: str) -> v1.MemoryEntry | None:
    from pyshim.protos.cgroups.v1 import metrics_pb2 as v1

    entry = v1.MemoryEntry()
    found = False
    for name, suffix in _V1_MEMORY_ENTRY_FILES:
        value = _read_value(directory, f"{prefix}.{suffix}")
        if value is not None:
            setattr(entry, name, value)
            found = True
    return entry if found else None


def _memory_v1(metrics: v1.Metrics, directory: str) -> None:
    from pyshim.protos.cgroups.v1 import metrics_pb2 as v1

    memory = v1.MemoryStat()
    found = _set_fields(
        memory, parse_flat_keyed(_read(directory, "memory.stat") or ""), _V1_MEMORY_KEYS
    )
    for name, prefix in (
        ("usage", "memory"),
        ("swap", "memory.memsw"),
        ("kernel", "memory.kmem"),
        ("kernel_tcp", "memory.kmem.tcp"),
    ):
        entry = _memory_entry_v1(directory, prefix)
        if entry is not None:
            getattr(memory, name).CopyFrom(entry)
            found = True
    if found:
        metrics.memory.CopyFrom(memory)
    oom = parse_flat_keyed(_read(directory, "memory.oom_control") or "")
    keys = ("oom_kill_disable", "under_oom", "oom_kill")
    _set_fields(metrics.memory_oom_control, oom, ((key, key) for key in keys))


def _cpu_v1(metrics: v1.Metrics, cpuacct: str | None, cpu: str | None) -> None:
    if cpuacct is not None:
        usage = metrics.cpu.usage
        total = _read_value(cpuacct, "cpuacct.usage")
        if total is not None:
            usage.total = total
        usage.per_cpu.extend(parse_percpu(_read(cpuacct, "cpuacct.usage_percpu") or ""))
        ticks = parse_flat_keyed(_read(cpuacct, "cpuacct.stat") or "")
        hertz = os.sysconf("SC_CLK_TCK")
        if "user" in ticks:
            usage.user = ticks["user"] * 1_000_000_000 // hertz
        if "system" in ticks:
            usage.kernel = ticks["system"] * 1_000_000_000 // hertz
    if cpu is not None:
        stat = parse_flat_keyed(_read(cpu, "cpu.stat") or "")
        _set_fields(
            metrics.cpu.throttling,
            stat,
            (
                ("nr_periods", "periods"),
                ("nr_throttled", "throttled_periods"),
                ("throttled_time", "throttled_time"),
            ),
        )


def _blkio_v1(metrics: v1.Metrics, directory: str) -> None:
    devices = parse_partitions(_read("/proc", "partitions") or "")
    for name, candidates in _V1_BLKIO_FILES:
        for candidate in candidates:
            text = _read(directory, candidate)
            if text is not None:
                getattr(metrics.blkio, name).extend(parse_blkio(text, devices))
                break


def _hugetlb_v1(metrics: v1.Metrics, directory: str) -> None:
    for size in _hugetlb_sizes(directory, "usage_in_bytes"):
        stat = metrics.hugetlb.add(pagesize=size)
        for name, suffix in (
            ("usage", "usage_in_bytes"),
            ("max", "max_usage_in_bytes"),
            ("failcnt", "failcnt"),
        ):
            value = _read_value(directory, f"hugetlb.{size}.{suffix}")
            if value is not None:
                setattr(stat, name, value)


def _metrics_v1(cgroup: Cgroup) -> v1.Metrics:
    from pyshim.protos.cgroups.v1 import metrics_pb2 as v1

    wanted = ("memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb")
    known = {name: cgroup.paths[name] for name in wanted if name in cgroup.paths}
    present = {name: path for name, path in known.items() if os.path.isdir(path)}
    if known and not present:
        raise CgroupGone(f"cgroup {next(iter(known.values()))} does not exist")
    metrics = v1.Metrics()
    if "memory" in present:
        _memory_v1(metrics, present["memory"])
    if "cpuacct" in present or "cpu" in present:
        _cpu_v1(metrics, present.get("cpuacct"), present.get("cpu"))
    if "pids" in present:
        current = _read_value(present["pids"], "pids.current")
        limit = _read_value(present["pids"], "pids.max", max_value=0)
        if current is not None:
            metrics.pids.current = current
        if limit is not None:
            metrics.pids.limit = limit
    if "blkio" in present:
        _blkio_v1(metrics, present["blkio"])
    if "hugetlb" in present:
        _hugetlb_v1(metrics, present["hugetlb"])
    return metrics


@cache
def _v2_memory_stat_keys() -> list[str]:
    """MemoryStat fields 1-31 are named after their memory.stat keys (the rest come from other
    files)."""
    from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

    return [entry.name for entry in v2.MemoryStat.DESCRIPTOR.fields if entry.number <= 31]


_V2_CPU_STAT_KEYS = [
    "usage_usec",
    "user_usec",
    "system_usec",
    "nr_periods",
    "nr_throttled",
    "throttled_usec",
    "nr_bursts",
    "burst_usec",
]
_V2_MEMORY_EVENT_KEYS = ["low", "high", "max", "oom", "oom_kill", "oom_group_kill"]


def _psi_into(target: v2.PSIStats, directory: str, name: str) -> None:
    text = _read(directory, name)
    if text is not None:
        target.CopyFrom(parse_psi(text))


def _metrics_v2(cgroup: Cgroup) -> v2.Metrics:
    from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

    directory = cgroup.path
    if not os.path.isdir(directory):
        raise CgroupGone(f"cgroup {directory} does not exist")
    metrics = v2.Metrics()
    # As containerd's cgroups v2 library: an unlimited ("max") limit reads as the largest uint64.
    current = _read_value(directory, "pids.current")
    limit = _read_value(directory, "pids.max", max_value=UINT64_MAX)
    if current is not None:
        metrics.pids.current = current
    if limit is not None:
        metrics.pids.limit = limit

    cpu = parse_flat_keyed(_read(directory, "cpu.stat") or "")
    _set_fields(metrics.cpu, cpu, ((key, key) for key in _V2_CPU_STAT_KEYS))
    _psi_into(metrics.cpu.psi, directory, "cpu.pressure")

    memory = v2.MemoryStat()
    stat = parse_flat_keyed(_read(directory, "memory.stat") or "")
    found = _set_fields(memory, stat, ((key, key) for key in _v2_memory_stat_keys()))
    for name, file, max_value in (
        ("usage", "memory.current", None),
        ("usage_limit", "memory.max", UINT64_MAX),
        ("swap_usage", "memory.swap.current", None),
        ("swap_limit", "memory.swap.max", UINT64_MAX),
        ("max_usage", "memory.peak", None),
        ("swap_max_usage", "memory.swap.peak", None),
    ):
        value = _read_value(directory, file, max_value)
        if value is not None:
            setattr(memory, name, value)
            found = True
    if found:
        _psi_into(memory.psi, directory, "memory.pressure")
        metrics.memory.CopyFrom(memory)

    io_stat = _read(directory, "io.stat")
    if io_stat is not None:
        metrics.io.usage.extend(parse_io_stat(io_stat))
        _psi_into(metrics.io.psi, directory, "io.pressure")

    for size in _hugetlb_sizes(directory, "current"):
        hugetlb = metrics.hugetlb.add(pagesize=size)
        usage = _read_value(directory, f"hugetlb.{size}.current")
        limit = _read_value(directory, f"hugetlb.{size}.max", UINT64_MAX)
        events = parse_flat_keyed(_read(directory, f"hugetlb.{size}.events") or "")
        if usage is not None:
            hugetlb.current = usage
        if limit is not None:
            hugetlb.max = limit
        if "max" in events:
            hugetlb.failcnt = events["max"]

    events_text = _read(directory, "memory.events")
    if events_text is not None:
        events = parse_flat_keyed(events_text)
        _set_fields(metrics.memory_events, events, ((k, k) for k in _V2_MEMORY_EVENT_KEYS))
    return metrics


def metrics(cgroup: Cgroup) -> any_pb2.Any:
    """The cgroup's statistics as StatsResponse.stats wants them.

    Missing files and controllers are left out; CgroupGone if the cgroup no longer exists
    (v1: none of its statistics controllers' directories is left).
    """
    from google.protobuf import any_pb2

    message: Message = _metrics_v1(cgroup) if cgroup.mode is CgroupMode.V1 else _metrics_v2(cgroup)
    out = any_pb2.Any()
    # The bare full name: containerd's type URLs have no type.googleapis.com/ prefix, which
    # Any.Pack would add.
    out.type_url = message.DESCRIPTOR.full_name
    out.value = message.SerializeToString()
    return out


# --- OOM events -------------------------------------------------------------------------------


class _Watch:
    """One registered fd and its cleanup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.closed = False
        # Handles what is pending on fd now (the reader callback, run on demand).
        self.poll: Callable[[], None] = lambda: None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)
            os.close(self.fd)


class OOMWatcher:
    """Calls `on_oom(key)` when a watched container's cgroup has an OOM kill.

    Everything runs on `loop` (add_reader), no threads. A watch that cannot be set up is logged
    and skipped; a watch whose cgroup goes away removes itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, v2_counter: str = "oom_kill") -> None:
        self._loop = loop
        self._watches: dict[str, _Watch] = {}
        # The memory.events line whose increase is an OOM: `oom_kill` (containerd), `oom`
        # (conmon: the limit was hit, whether or not a process was killed for it).
        self._v2_counter = v2_counter

    def __contains__(self, key: object) -> bool:
        return key in self._watches

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> None:
        """Watch `cgroup` under `key` (replacing an earlier watch of that key)."""
        self.remove(key)
        try:
            if cgroup.mode is CgroupMode.V1:
                watch = self._add_v1(key, cgroup, on_oom)
            else:
                watch = self._add_v2(key, cgroup, on_oom)
        except Exception as exc:
            _log.warning("cannot watch %s for OOM events: %s", key, exc)
            return
        self._watches[key] = watch

    def check(self, key: str) -> None:
        """Handle an OOM the kernel has signalled but the loop has not delivered yet, now
        (before an exit is reported: conmon's final check, spec §11.1 of conmon-compat.md).
        v2 re-reads memory.events whether or not inotify has spoken yet."""
        watch = self._watches.get(key)
        if watch is not None:
            watch.poll()

    def remove(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            watch.close()

    def close(self) -> None:
        for key in list(self._watches):
            self.remove(key)

    def _drop(self, key: str, watch: _Watch) -> None:
        # The key may meanwhile name a newer watch; only this one goes.
        if self._watches.get(key) is watch:
            del self._watches[key]
        watch.close()

    def _notify(self, key: str, on_oom: Callable[[str], None]) -> None:
        try:
            on_oom(key)
        except Exception:
            _log.exception("OOM callback for %s failed", key)

    def _add_v1(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> _Watch:
        directory = cgroup.paths.get("memory")
        if directory is None:
            raise LookupError("the cgroup has no memory controller")
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(
                os.path.join(directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC
            )
            try:
                events = os.open(
                    os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
                )
                try:
                    os.write(events, f"{efd} {control}".encode())
                finally:
                    os.close(events)
            finally:
                # The kernel holds its own reference once registered.
                os.close(control)
            watch = _Watch(self._loop, efd)
            watch.poll = lambda: self._on_v1_event(key, watch, directory, on_oom)
            self._loop.add_reader(efd, watch.poll)
        except BaseException:
            os.close(efd)
            raise
        return watch

    def _on_v1_event(
        self, key: str, watch: _Watch, directory: str, on_oom: Callable[[str], None]
    ) -> None:
        try:
            count = int.from_bytes(os.read(watch.fd, 8), sys.byteorder)
        except BlockingIOError:
            return
        except OSError as exc:
            _log.warning("OOM watch of %s failed: %s", key, exc)
            self._drop(key, watch)
            return
        # The kernel also signals the eventfd when the cgroup is removed: one event then is the
        # removal, more (read at once) were an OOM before it (conmon reads them so too).
        if not os.path.isdir(directory):
            self._drop(key, watch)
            if count > 1:
                self._notify(key, on_oom)
            return
        self._notify(key, on_oom)

    def _add_v2(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> _Watch:
        directory = cgroup.path
        fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        try:
            events = os.path.join(directory, "memory.events")
            _check(_libc.inotify_add_watch(fd, os.fsencode(events), _IN_MODIFY), events)
            # cgroup.events says when the last process has left ("populated 0").
            populated = os.path.join(directory, "cgroup.events")
            if _libc.inotify_add_watch(fd, os.fsencode(populated), _IN_MODIFY) < 0:
                _log.debug("cannot watch %s", populated)
            watch = _Watch(self._loop, fd)
            # containerd's baseline is 0 too: a kill before the watch counts at the next event.
            state = {"count": 0}
            watch.poll = lambda: self._on_v2_event(key, watch, directory, state, on_oom)
            self._loop.add_reader(fd, watch.poll)
        except BaseException:
            os.close(fd)
            raise
        return watch

    def _on_v2_event(
        self,
        key: str,
        watch: _Watch,
        directory: str,
        state: dict[str, int],
        on_oom: Callable[[str], None],
    ) -> None:
        try:
            while os.read(watch.fd, 4096):
                pass  # the event records themselves do not matter; the files are re-read
        except BlockingIOError:
            pass
        except OSError as exc:
            _log.warning("OOM watch of %s failed: %s", key, exc)
            self._drop(key, watch)
            return
        text = _read(directory, "memory.events")
        if text is None:
            self._drop(key, watch)
            return
        count = parse_flat_keyed(text).get(self._v2_counter, 0)
        if count > state["count"]:
            state["count"] = count
            self._notify(key, on_oom)
        populated = parse_flat_keyed(_read(directory, "cgroup.events") or "").get("populated")
        if populated == 0:
            self._drop(key, watch)
