"""cgroup file parsing and Metrics building, fed with text and fake cgroup directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyshim.cgroup_metrics import metrics, parse_blkio, parse_io_stat, parse_psi
from pyshim.cgroups import (
    UINT64_MAX,
    Cgroup,
    CgroupGone,
    CgroupMode,
    CgroupNotFound,
    parse_flat_keyed,
    parse_mountinfo_v1,
    parse_partitions,
    parse_percpu,
    parse_proc_cgroup,
    parse_value,
)
from pyshim.protos.cgroups.v1 import metrics_pb2 as v1
from pyshim.protos.cgroups.v2 import metrics_pb2 as v2

HYBRID = """\
12:hugetlb:/default/web
11:cpu,cpuacct:/default/web
10:memory:/default/web
9:pids:/default/web
8:blkio:/default/web
1:name=systemd:/system.slice/containerd.service
0::/system.slice/containerd.service
"""

UNIFIED = "0::/kubepods.slice/pod1/cri-containerd-abc.scope\n"


def test_v1_hybrid_maps_every_controller_and_skips_the_unified_line() -> None:
    cgroup = parse_proc_cgroup(HYBRID, CgroupMode.V1, "/sys/fs/cgroup")
    assert cgroup.mode is CgroupMode.V1
    assert cgroup.path == ""
    assert dict(cgroup.paths) == {
        "hugetlb": "/sys/fs/cgroup/hugetlb/default/web",
        "cpu": "/sys/fs/cgroup/cpu/default/web",
        "cpuacct": "/sys/fs/cgroup/cpuacct/default/web",
        "memory": "/sys/fs/cgroup/memory/default/web",
        "pids": "/sys/fs/cgroup/pids/default/web",
        "blkio": "/sys/fs/cgroup/blkio/default/web",
        "name=systemd": "/sys/fs/cgroup/systemd/system.slice/containerd.service",
    }


def test_v1_uses_mount_points_from_mountinfo() -> None:
    mountinfo = (
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "30 29 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup "
        "rw,cpu,cpuacct\n"
        "31 29 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "32 29 0:28 /default /mnt/mem\\040cg rw - cgroup cgroup rw,memory\n"
        "33 29 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    mounts = parse_mountinfo_v1(mountinfo)
    assert mounts["cpu"] == mounts["cpuacct"] == ("/sys/fs/cgroup/cpu,cpuacct", "/")
    assert mounts["name=systemd"] == ("/sys/fs/cgroup/systemd", "/")
    assert mounts["memory"] == ("/mnt/mem cg", "/default")
    cgroup = parse_proc_cgroup(HYBRID, CgroupMode.V1, "/sys/fs/cgroup", mounts)
    assert cgroup.paths["cpu"] == "/sys/fs/cgroup/cpu,cpuacct/default/web"
    assert cgroup.paths["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/default/web"
    # A mount of a subtree shows the path below its own root.
    assert cgroup.paths["memory"] == "/mnt/mem cg/web"
    # Controllers without a mount fall back to <root>/<controller>.
    assert cgroup.paths["pids"] == "/sys/fs/cgroup/pids/default/web"


def test_v1_root_cgroup_is_the_mount_itself() -> None:
    cgroup = parse_proc_cgroup("4:memory:/\n", CgroupMode.V1, "/cg")
    assert cgroup.paths == {"memory": "/cg/memory"}


def test_v2_uses_the_unified_line() -> None:
    cgroup = parse_proc_cgroup(UNIFIED, CgroupMode.V2, "/sys/fs/cgroup")
    assert cgroup == Cgroup(
        CgroupMode.V2, path="/sys/fs/cgroup/kubepods.slice/pod1/cri-containerd-abc.scope"
    )
    assert parse_proc_cgroup("0::/\n", CgroupMode.V2, "/sys/fs/cgroup").path == "/sys/fs/cgroup"
    # On a hybrid host a v2 view is still possible, from the 0:: line.
    assert parse_proc_cgroup(HYBRID, CgroupMode.V2, "/u").path == (
        "/u/system.slice/containerd.service"
    )
    assert hash(cgroup) == hash(Cgroup(CgroupMode.V2, path=cgroup.path))


def test_missing_entries_are_not_found() -> None:
    with pytest.raises(CgroupNotFound, match="0::"):
        parse_proc_cgroup("4:memory:/x\n", CgroupMode.V2)
    with pytest.raises(CgroupNotFound, match="v1"):
        parse_proc_cgroup("0::/x\n", CgroupMode.V1)
    with pytest.raises(CgroupNotFound):
        parse_proc_cgroup("", CgroupMode.V1)


def test_parse_value() -> None:
    assert parse_value("1234\n") == 1234
    assert parse_value("max\n") is None
    assert parse_value("max\n", max_value=0) == 0
    assert parse_value("max", max_value=UINT64_MAX) == UINT64_MAX
    assert parse_value("-1") is None
    assert parse_value("") is None
    assert parse_value(str(UINT64_MAX)) == UINT64_MAX


def test_parse_flat_keyed() -> None:
    text = (
        "cache 9322496\nrss 5300224\nweird\nbad x\nhierarchical_memory_limit 9223372036854771712\n"
    )
    assert parse_flat_keyed(text) == {
        "cache": 9322496,
        "rss": 5300224,
        "hierarchical_memory_limit": 9223372036854771712,
    }


def test_parse_percpu_tolerates_the_trailing_space() -> None:
    assert parse_percpu("288818990833 607798337850 \n") == [288818990833, 607798337850]
    assert parse_percpu("") == []


def test_parse_partitions() -> None:
    text = "major minor  #blocks  name\n\n 254        0   52428800 vda\n   7        0  1024 loop0\n"
    assert parse_partitions(text) == {(254, 0): "/dev/vda", (7, 0): "/dev/loop0"}


def test_parse_blkio() -> None:
    text = "8:0 Read 4096\n8:0 Write 8192\n8:16 Total 12\nTotal 12300\n"
    entries = parse_blkio(text, {(8, 0): "/dev/sda"})
    assert entries == [
        v1.BlkIOEntry(op="Read", device="/dev/sda", major=8, minor=0, value=4096),
        v1.BlkIOEntry(op="Write", device="/dev/sda", major=8, minor=0, value=8192),
        v1.BlkIOEntry(op="Total", device="", major=8, minor=16, value=12),
    ]
    # time_recursive / sectors_recursive have no operation column.
    assert parse_blkio("8:0 1500\n") == [v1.BlkIOEntry(major=8, minor=0, value=1500)]


def test_parse_io_stat() -> None:
    text = (
        "254:0 rbytes=1048576 wbytes=4096 rios=12 wios=1 dbytes=0 dios=0\n"
        "7:0 rbytes=10 wbytes=0 rios=1 wios=0\n"
    )
    assert parse_io_stat(text) == [
        v2.IOEntry(major=254, minor=0, rbytes=1048576, wbytes=4096, rios=12, wios=1),
        v2.IOEntry(major=7, minor=0, rbytes=10, rios=1),
    ]


def test_parse_psi() -> None:
    text = (
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=123456\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"
    )
    psi = parse_psi(text)
    assert (psi.some.avg10, psi.some.avg60, psi.some.total) == (1.5, 0.25, 123456)
    assert psi.full.total == 42


# --- metrics from fake cgroup directories ----------------------------------------------------


def write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


MEMORY_STAT_V1 = """\
cache 100
rss 200
rss_huge 300
shmem 7
mapped_file 400
dirty 500
writeback 600
pgpgin 700
pgpgout 800
pgfault 900
pgmajfault 1000
inactive_anon 1100
active_anon 1200
inactive_file 1300
active_file 1400
unevictable 1500
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 10100
total_rss 10200
total_rss_huge 10300
total_mapped_file 10400
total_dirty 10500
total_writeback 10600
total_pgpgin 10700
total_pgpgout 10800
total_pgfault 10900
total_pgmajfault 11000
total_inactive_anon 11100
total_active_anon 11200
total_inactive_file 11300
total_active_file 11400
total_unevictable 11500
"""


def v1_fake(tmp_path: Path) -> Cgroup:
    base = tmp_path / "cg"
    write(
        base / "memory" / "c1",
        {
            "memory.stat": MEMORY_STAT_V1,
            "memory.usage_in_bytes": "4096\n",
            "memory.limit_in_bytes": "16777216\n",
            "memory.max_usage_in_bytes": "8192\n",
            "memory.failcnt": "3\n",
            "memory.memsw.usage_in_bytes": "4097\n",
            "memory.memsw.limit_in_bytes": "16777217\n",
            "memory.kmem.usage_in_bytes": "11\n",
            "memory.kmem.tcp.max_usage_in_bytes": "12\n",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n",
        },
    )
    write(
        base / "cpuacct" / "c1",
        {
            "cpuacct.usage": "27361404\n",
            "cpuacct.usage_percpu": "20000000 7361404 \n",
            "cpuacct.stat": "user 1\nsystem 3\n",
        },
    )
    write(
        base / "cpu" / "c1",
        {"cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\nnr_bursts 0\n"},
    )
    write(base / "pids" / "c1", {"pids.current": "2\n", "pids.max": "max\n"})
    write(
        base / "blkio" / "c1",
        {
            "blkio.throttle.io_service_bytes_recursive": (
                "7:0 Read 4096\n7:0 Total 4096\nTotal 4096\n"
            ),
            "blkio.throttle.io_serviced_recursive": "7:0 Read 1\nTotal 1\n",
        },
    )
    write(
        base / "hugetlb" / "c1",
        {
            "hugetlb.2MB.usage_in_bytes": "2097152\n",
            "hugetlb.2MB.max_usage_in_bytes": "4194304\n",
            "hugetlb.2MB.failcnt": "1\n",
            "hugetlb.1GB.usage_in_bytes": "0\n",
            "hugetlb.2MB.limit_in_bytes": "9223372036854771712\n",
        },
    )
    text = "\n".join(
        f"{n}:{c}:/c1" for n, c in enumerate(["memory", "cpu,cpuacct", "pids", "blkio", "hugetlb"])
    )
    return parse_proc_cgroup(text, CgroupMode.V1, str(base))


def test_v1_metrics_from_files(tmp_path: Path) -> None:
    stats = metrics(v1_fake(tmp_path))
    assert stats.type_url == "io.containerd.cgroups.v1.Metrics"
    m = v1.Metrics.FromString(stats.value)

    memory = m.memory
    assert (memory.cache, memory.rss, memory.rss_huge, memory.mapped_file) == (100, 200, 300, 400)
    assert (memory.dirty, memory.writeback, memory.pg_pg_in, memory.pg_pg_out) == (
        500,
        600,
        700,
        800,
    )
    assert (memory.pg_fault, memory.pg_maj_fault) == (900, 1000)
    assert (memory.inactive_anon, memory.active_anon) == (1100, 1200)
    assert (memory.inactive_file, memory.active_file, memory.unevictable) == (1300, 1400, 1500)
    assert memory.hierarchical_memory_limit == 9223372036854771712
    assert memory.hierarchical_swap_limit == 9223372036854771712
    assert (memory.total_cache, memory.total_rss, memory.total_rss_huge) == (10100, 10200, 10300)
    assert (memory.total_mapped_file, memory.total_dirty, memory.total_writeback) == (
        10400,
        10500,
        10600,
    )
    assert (memory.total_pg_pg_in, memory.total_pg_pg_out) == (10700, 10800)
    assert (memory.total_pg_fault, memory.total_pg_maj_fault) == (10900, 11000)
    assert (memory.total_inactive_anon, memory.total_active_anon) == (11100, 11200)
    assert (memory.total_inactive_file, memory.total_active_file) == (11300, 11400)
    assert memory.total_unevictable == 11500
    assert memory.usage == v1.MemoryEntry(limit=16777216, usage=4096, max=8192, failcnt=3)
    assert memory.swap == v1.MemoryEntry(limit=16777217, usage=4097)
    assert memory.kernel == v1.MemoryEntry(usage=11)
    assert memory.kernel_tcp == v1.MemoryEntry(max=12)
    assert m.memory_oom_control == v1.MemoryOomControl(oom_kill_disable=0, under_oom=1, oom_kill=2)

    hertz = os.sysconf("SC_CLK_TCK")
    assert m.cpu.usage == v1.CPUUsage(
        total=27361404,
        user=1_000_000_000 // hertz,
        kernel=3 * 1_000_000_000 // hertz,
        per_cpu=[20000000, 7361404],
    )
    assert m.cpu.throttling == v1.Throttle(periods=10, throttled_periods=2, throttled_time=5000)
    assert m.pids == v1.PidsStat(current=2, limit=0)  # "max" reads as 0 in v1
    assert [(e.op, e.major, e.minor, e.value) for e in m.blkio.io_service_bytes_recursive] == [
        ("Read", 7, 0, 4096),
        ("Total", 7, 0, 4096),
    ]
    assert [(e.op, e.value) for e in m.blkio.io_serviced_recursive] == [("Read", 1)]
    assert list(m.hugetlb) == [
        v1.HugetlbStat(pagesize="2MB", usage=2097152, max=4194304, failcnt=1),
        v1.HugetlbStat(pagesize="1GB", usage=0),
    ]


def test_v1_missing_controllers_and_files_are_skipped(tmp_path: Path) -> None:
    base = tmp_path / "cg"
    write(base / "memory" / "c1", {"memory.usage_in_bytes": "4096\n"})
    cgroup = parse_proc_cgroup("1:memory:/c1\n2:pids:/c1\n", CgroupMode.V1, str(base))
    m = v1.Metrics.FromString(metrics(cgroup).value)
    assert m.memory.usage.usage == 4096
    assert not m.HasField("pids")
    assert not m.HasField("cpu")
    assert len(m.hugetlb) == 0


def test_v1_gone_when_no_directory_is_left(tmp_path: Path) -> None:
    cgroup = parse_proc_cgroup("1:memory:/c1\n2:pids:/c1\n", CgroupMode.V1, str(tmp_path))
    with pytest.raises(CgroupGone):
        metrics(cgroup)


def v2_fake(tmp_path: Path) -> Cgroup:
    directory = tmp_path / "pod" / "ctr"
    memory_stat = "".join(
        f"{key} {n}\n"
        for n, key in enumerate(
            [
                "anon",
                "file",
                "kernel_stack",
                "slab",
                "sock",
                "shmem",
                "file_mapped",
                "file_dirty",
                "file_writeback",
                "anon_thp",
                "inactive_anon",
                "active_anon",
                "inactive_file",
                "active_file",
                "unevictable",
                "slab_reclaimable",
                "slab_unreclaimable",
                "pgfault",
                "pgmajfault",
                "workingset_refault",
                "workingset_activate",
                "workingset_nodereclaim",
                "pgrefill",
                "pgscan",
                "pgsteal",
                "pgactivate",
                "pgdeactivate",
                "pglazyfree",
                "pglazyfreed",
                "thp_fault_alloc",
                "thp_collapse_alloc",
            ],
            start=1,
        )
    )
    write(
        directory,
        {
            "cgroup.procs": "",
            "pids.current": "3\n",
            "pids.max": "max\n",
            "cpu.stat": "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 5\n"
            "nr_throttled 1\nthrottled_usec 7\nnr_bursts 0\nburst_usec 0\n",
            "cpu.pressure": "some avg10=0.50 avg60=0.00 avg300=0.00 total=99\n",
            "memory.stat": memory_stat + "workingset_refault_anon 1\n",
            "memory.current": "65536\n",
            "memory.max": "16777216\n",
            "memory.swap.current": "0\n",
            "memory.swap.max": "max\n",
            "memory.peak": "131072\n",
            "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\noom_group_kill 0\n",
            "io.stat": "254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n",
            "hugetlb.2MB.current": "2097152\n",
            "hugetlb.2MB.max": "max\n",
            "hugetlb.2MB.events": "max 6\n",
        },
    )
    return parse_proc_cgroup("0::/pod/ctr\n", CgroupMode.V2, str(tmp_path))


def test_v2_metrics_from_files(tmp_path: Path) -> None:
    stats = metrics(v2_fake(tmp_path))
    assert stats.type_url == "io.containerd.cgroups.v2.Metrics"
    m = v2.Metrics.FromString(stats.value)
    assert m.pids == v2.PidsStat(current=3, limit=UINT64_MAX)
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec) == (100, 60, 40)
    assert (m.cpu.nr_periods, m.cpu.nr_throttled, m.cpu.throttled_usec) == (5, 1, 7)
    assert m.cpu.psi.some.total == 99
    assert (m.memory.anon, m.memory.file, m.memory.thp_collapse_alloc) == (1, 2, 31)
    assert (m.memory.pgfault, m.memory.pgmajfault, m.memory.pglazyfreed) == (18, 19, 29)
    assert (m.memory.usage, m.memory.usage_limit) == (65536, 16777216)
    assert (m.memory.swap_usage, m.memory.swap_limit) == (0, UINT64_MAX)
    assert m.memory.max_usage == 131072
    assert m.memory_events == v2.MemoryEvents(low=0, high=1, max=2, oom=3, oom_kill=4)
    assert list(m.io.usage) == [v2.IOEntry(major=254, minor=0, rbytes=1, wbytes=2, rios=3, wios=4)]
    assert list(m.hugetlb) == [
        v2.HugeTlbStat(pagesize="2MB", current=2097152, max=UINT64_MAX, failcnt=6)
    ]


def test_v2_gone(tmp_path: Path) -> None:
    with pytest.raises(CgroupGone):
        metrics(Cgroup(CgroupMode.V2, path=str(tmp_path / "deleted")))


def test_any_type_urls_are_bare_full_names(tmp_path: Path) -> None:
    # No "type.googleapis.com/" prefix: containerd matches these strings exactly.
    empty_v1 = metrics(Cgroup(CgroupMode.V1))
    assert empty_v1.type_url == "io.containerd.cgroups.v1.Metrics"
    assert empty_v1.value == b""
    empty_v2 = metrics(Cgroup(CgroupMode.V2, path=str(tmp_path)))
    assert empty_v2.type_url == "io.containerd.cgroups.v2.Metrics"
    assert v1.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert v2.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"
