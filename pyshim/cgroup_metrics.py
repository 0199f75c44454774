"""containerd's cgroup statistics: io.containerd.cgroups.v1/v2 Metrics for StatsResponse.

Built from the files cgroups.py locates and reads; the containerd front end passes `metrics`
to Container.stats(). Missing files and controllers are left out; never writes to a cgroup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from google.protobuf import any_pb2
from google.protobuf.message import Message

from pyshim.cgroups import (
    UINT64_MAX,
    Cgroup,
    CgroupGone,
    CgroupMode,
    hugetlb_sizes,
    parse_device,
    parse_flat_keyed,
    parse_partitions,
    parse_percpu,
    parse_uint,
    read_file,
    read_value,
)
from pyshim.protos.cgroups.v1 import metrics_pb2 as v1
from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

__all__ = ["metrics", "parse_blkio", "parse_io_stat", "parse_psi"]


def parse_blkio(
    text: str, devices: Mapping[tuple[int, int], str] | None = None
) -> list[v1.BlkIOEntry]:
    """A v1 blkio file: `major:minor Op value` lines (or `major:minor value`); `Total` skipped."""
    entries: list[v1.BlkIOEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (2, 3) or (device := parse_device(parts[0])) is None:
            continue
        if (value := parse_uint(parts[-1])) is None:
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
    entries: list[v2.IOEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or (device := parse_device(parts[0])) is None:
            continue
        entry = v2.IOEntry(major=device[0], minor=device[1])
        for part in parts[1:]:
            key, _, raw = part.partition("=")
            value = parse_uint(raw)
            if key in ("rbytes", "wbytes", "rios", "wios") and value is not None:
                setattr(entry, key, value)
        entries.append(entry)
    return entries


def parse_psi(text: str) -> v2.PSIStats:
    """A *.pressure file: `some|full avg10=… avg60=… avg300=… total=…` lines."""
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
                elif key == "total" and (value := parse_uint(raw)) is not None:
                    data.total = value
            except ValueError:
                continue
    return stats


# --- Metrics ----------------------------------------------------------------------------------


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
def _memory_entry_v1(directory: str, prefix: str) -> v1.MemoryEntry | None:
    entry = v1.MemoryEntry()
    found = False
    for name, suffix in _V1_MEMORY_ENTRY_FILES:
        value = read_value(directory, f"{prefix}.{suffix}")
        if value is not None:
            setattr(entry, name, value)
            found = True
    return entry if found else None


def _memory_v1(metrics: v1.Metrics, directory: str) -> None:
    memory = v1.MemoryStat()
    found = _set_fields(
        memory, parse_flat_keyed(read_file(directory, "memory.stat") or ""), _V1_MEMORY_KEYS
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
    oom = parse_flat_keyed(read_file(directory, "memory.oom_control") or "")
    keys = ("oom_kill_disable", "under_oom", "oom_kill")
    _set_fields(metrics.memory_oom_control, oom, ((key, key) for key in keys))


def _cpu_v1(metrics: v1.Metrics, cpuacct: str | None, cpu: str | None) -> None:
    if cpuacct is not None:
        usage = metrics.cpu.usage
        total = read_value(cpuacct, "cpuacct.usage")
        if total is not None:
            usage.total = total
        usage.per_cpu.extend(parse_percpu(read_file(cpuacct, "cpuacct.usage_percpu") or ""))
        ticks = parse_flat_keyed(read_file(cpuacct, "cpuacct.stat") or "")
        hertz = os.sysconf("SC_CLK_TCK")
        if "user" in ticks:
            usage.user = ticks["user"] * 1_000_000_000 // hertz
        if "system" in ticks:
            usage.kernel = ticks["system"] * 1_000_000_000 // hertz
    if cpu is not None:
        stat = parse_flat_keyed(read_file(cpu, "cpu.stat") or "")
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
    devices = parse_partitions(read_file("/proc", "partitions") or "")
    for name, candidates in _V1_BLKIO_FILES:
        for candidate in candidates:
            text = read_file(directory, candidate)
            if text is not None:
                getattr(metrics.blkio, name).extend(parse_blkio(text, devices))
                break


def _hugetlb_v1(metrics: v1.Metrics, directory: str) -> None:
    for size in hugetlb_sizes(directory, "usage_in_bytes"):
        stat = metrics.hugetlb.add(pagesize=size)
        for name, suffix in (
            ("usage", "usage_in_bytes"),
            ("max", "max_usage_in_bytes"),
            ("failcnt", "failcnt"),
        ):
            value = read_value(directory, f"hugetlb.{size}.{suffix}")
            if value is not None:
                setattr(stat, name, value)


def _metrics_v1(cgroup: Cgroup) -> v1.Metrics:
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
        current = read_value(present["pids"], "pids.current")
        limit = read_value(present["pids"], "pids.max", max_value=0)
        if current is not None:
            metrics.pids.current = current
        if limit is not None:
            metrics.pids.limit = limit
    if "blkio" in present:
        _blkio_v1(metrics, present["blkio"])
    if "hugetlb" in present:
        _hugetlb_v1(metrics, present["hugetlb"])
    return metrics


# MemoryStat fields 1-31 are named after their memory.stat keys (the rest come from other files).
_V2_MEMORY_STAT_KEYS = [
    entry.name for entry in v2.MemoryStat.DESCRIPTOR.fields if entry.number <= 31
]
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
    text = read_file(directory, name)
    if text is not None:
        target.CopyFrom(parse_psi(text))


def _metrics_v2(cgroup: Cgroup) -> v2.Metrics:
    directory = cgroup.path
    if not os.path.isdir(directory):
        raise CgroupGone(f"cgroup {directory} does not exist")
    metrics = v2.Metrics()
    # As containerd's cgroups v2 library: an unlimited ("max") limit reads as the largest uint64.
    current = read_value(directory, "pids.current")
    limit = read_value(directory, "pids.max", max_value=UINT64_MAX)
    if current is not None:
        metrics.pids.current = current
    if limit is not None:
        metrics.pids.limit = limit

    cpu = parse_flat_keyed(read_file(directory, "cpu.stat") or "")
    _set_fields(metrics.cpu, cpu, ((key, key) for key in _V2_CPU_STAT_KEYS))
    _psi_into(metrics.cpu.psi, directory, "cpu.pressure")

    memory = v2.MemoryStat()
    stat = parse_flat_keyed(read_file(directory, "memory.stat") or "")
    found = _set_fields(memory, stat, ((key, key) for key in _V2_MEMORY_STAT_KEYS))
    for name, file, max_value in (
        ("usage", "memory.current", None),
        ("usage_limit", "memory.max", UINT64_MAX),
        ("swap_usage", "memory.swap.current", None),
        ("swap_limit", "memory.swap.max", UINT64_MAX),
        ("max_usage", "memory.peak", None),
        ("swap_max_usage", "memory.swap.peak", None),
    ):
        value = read_value(directory, file, max_value)
        if value is not None:
            setattr(memory, name, value)
            found = True
    if found:
        _psi_into(memory.psi, directory, "memory.pressure")
        metrics.memory.CopyFrom(memory)

    io_stat = read_file(directory, "io.stat")
    if io_stat is not None:
        metrics.io.usage.extend(parse_io_stat(io_stat))
        _psi_into(metrics.io.psi, directory, "io.pressure")

    for size in hugetlb_sizes(directory, "current"):
        hugetlb = metrics.hugetlb.add(pagesize=size)
        usage = read_value(directory, f"hugetlb.{size}.current")
        limit = read_value(directory, f"hugetlb.{size}.max", UINT64_MAX)
        events = parse_flat_keyed(read_file(directory, f"hugetlb.{size}.events") or "")
        if usage is not None:
            hugetlb.current = usage
        if limit is not None:
            hugetlb.max = limit
        if "max" in events:
            hugetlb.failcnt = events["max"]

    events_text = read_file(directory, "memory.events")
    if events_text is not None:
        events = parse_flat_keyed(events_text)
        _set_fields(metrics.memory_events, events, ((k, k) for k in _V2_MEMORY_EVENT_KEYS))
    return metrics


def metrics(cgroup: Cgroup) -> any_pb2.Any:
    """The cgroup's statistics as StatsResponse.stats wants them.

    Missing files and controllers are left out; CgroupGone if the cgroup no longer exists
    (v1: none of its statistics controllers' directories is left).
    """
    message: Message = _metrics_v1(cgroup) if cgroup.mode is CgroupMode.V1 else _metrics_v2(cgroup)
    out = any_pb2.Any()
    # The bare full name: containerd's type URLs have no type.googleapis.com/ prefix, which
    # Any.Pack would add.
    out.type_url = message.DESCRIPTOR.full_name
    out.value = message.SerializeToString()
    return out


