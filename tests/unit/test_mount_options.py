"""Mount option translation (spec §5.5 table) and the overlay lowerdir compaction decision."""

from __future__ import annotations

import pytest

from pyshim import mount
from pyshim.mount import (
    MountError,
    MountSpec,
    UnmountError,
    compact_lowerdir,
    overlay_needs_compaction,
    parse_options,
)

SET_CLEAR = [
    ("ro", "rw", mount.MS_RDONLY),
    ("nosuid", "suid", mount.MS_NOSUID),
    ("nodev", "dev", mount.MS_NODEV),
    ("noexec", "exec", mount.MS_NOEXEC),
    ("sync", "async", mount.MS_SYNCHRONOUS),
    ("mand", "nomand", mount.MS_MANDLOCK),
    ("noatime", "atime", mount.MS_NOATIME),
    ("nodiratime", "diratime", mount.MS_NODIRATIME),
    ("relatime", "norelatime", mount.MS_RELATIME),
    ("strictatime", "nostrictatime", mount.MS_STRICTATIME),
]


def test_flag_values_are_the_kernel_ones() -> None:
    assert (mount.MS_RDONLY, mount.MS_BIND, mount.MS_REC, mount.MS_REMOUNT) == (1, 4096, 16384, 32)
    assert mount.MS_PRIVATE == 1 << 18 and mount.MS_SHARED == 1 << 20
    assert mount.MS_SLAVE == 1 << 19 and mount.MS_UNBINDABLE == 1 << 17
    assert mount.MS_RELATIME == 1 << 21 and mount.MS_STRICTATIME == 1 << 24


@pytest.mark.parametrize(("set_option", "clear_option", "flag"), SET_CLEAR)
def test_set_and_clear_pairs(set_option: str, clear_option: str, flag: int) -> None:
    assert parse_options([set_option]) == MountSpec(flags=flag, data="", propagation=0, loop=False)
    assert parse_options([set_option, clear_option]).flags == 0
    # Later options win, as they are applied in order.
    assert parse_options([clear_option, set_option]).flags == flag
    assert parse_options([clear_option]).flags == 0


@pytest.mark.parametrize(
    ("option", "flag"),
    [
        ("bind", mount.MS_BIND),
        ("rbind", mount.MS_BIND | mount.MS_REC),
        ("dirsync", mount.MS_DIRSYNC),
        ("remount", mount.MS_REMOUNT),
        ("defaults", 0),
    ],
)
def test_set_only_options(option: str, flag: int) -> None:
    spec = parse_options([option])
    assert (spec.flags, spec.data, spec.propagation, spec.loop) == (flag, "", 0, False)


def test_snapshotter_bind_view() -> None:
    spec = parse_options(["ro", "rbind"])
    assert spec.flags == mount.MS_RDONLY | mount.MS_BIND | mount.MS_REC
    assert spec.data == ""


def test_unknown_options_are_joined_in_order_into_data() -> None:
    spec = parse_options(
        [
            "index=off",
            "workdir=/s/2/work",
            "nodev",
            "upperdir=/s/2/fs",
            "lowerdir=/s/1/fs",
        ]
    )
    assert spec.flags == mount.MS_NODEV
    assert spec.data == "index=off,workdir=/s/2/work,upperdir=/s/2/fs,lowerdir=/s/1/fs"
    assert parse_options(["size=64k", "mode=755", "uid=0"]).data == "size=64k,mode=755,uid=0"
    assert parse_options([]) == MountSpec(flags=0, data="", propagation=0, loop=False)


@pytest.mark.parametrize(
    ("option", "propagation"),
    [
        ("private", mount.MS_PRIVATE),
        ("rprivate", mount.MS_PRIVATE | mount.MS_REC),
        ("shared", mount.MS_SHARED),
        ("rshared", mount.MS_SHARED | mount.MS_REC),
        ("slave", mount.MS_SLAVE),
        ("rslave", mount.MS_SLAVE | mount.MS_REC),
        ("unbindable", mount.MS_UNBINDABLE),
        ("runbindable", mount.MS_UNBINDABLE | mount.MS_REC),
    ],
)
def test_propagation_is_kept_apart_from_the_mount_flags(option: str, propagation: int) -> None:
    spec = parse_options(["bind", option])
    assert spec.flags == mount.MS_BIND
    assert spec.propagation == propagation
    assert spec.data == ""


def test_last_propagation_option_wins() -> None:
    assert parse_options(["rshared", "private"]).propagation == mount.MS_PRIVATE


def test_loop_is_a_request_not_data() -> None:
    spec = parse_options(["loop", "ro", "errors=remount-ro"])
    assert spec.loop
    assert spec.flags == mount.MS_RDONLY
    assert spec.data == "errors=remount-ro"


def test_overlay_compaction_threshold_is_page_size_minus_512() -> None:
    # Each option counts with a separator, as containerd measures it.
    short = ["a" * 100] * 5  # 505 bytes
    assert not overlay_needs_compaction(short, page_size=1018)
    assert overlay_needs_compaction(short, page_size=1017)
    assert not overlay_needs_compaction(["x" * 3582], page_size=4096)
    assert overlay_needs_compaction(["x" * 3583], page_size=4096)


def test_compaction_makes_lowerdirs_relative_to_their_common_parent() -> None:
    snapshots = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
    options = [
        "index=off",
        f"workdir={snapshots}/13/work",
        f"upperdir={snapshots}/13/fs",
        f"lowerdir={snapshots}/12/fs:{snapshots}/11/fs:{snapshots}/1/fs",
    ]
    chdir, compacted = compact_lowerdir(options)
    # The common string prefix ends in "/1"; the parent directory is what is used.
    assert chdir == snapshots + "/"
    assert compacted == [*options[:3], "lowerdir=12/fs:11/fs:1/fs"]


def test_compaction_moves_lowerdir_last_and_keeps_other_options() -> None:
    chdir, compacted = compact_lowerdir(["lowerdir=/a/b/1:/a/b/2", "index=off"])
    assert chdir == "/a/b/"
    assert compacted == ["index=off", "lowerdir=1:2"]


@pytest.mark.parametrize(
    "options",
    [
        ["upperdir=/a/u", "workdir=/a/w"],  # no lowerdir
        ["lowerdir=/a/b/1"],  # a single layer
        ["lowerdir=/x/1:/y/2"],  # only "/" in common
        ["lowerdir=rel/1:rel/2"],  # not absolute
    ],
)
def test_compaction_declines_when_nothing_is_gained(options: list[str]) -> None:
    assert compact_lowerdir(options) == (None, options)


def test_compacted_data_fits_where_the_original_did_not() -> None:
    parent = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
    lowers = ":".join(f"{parent}/{n}/fs" for n in range(100, 160))
    options = ["workdir=/w", "upperdir=/u", f"lowerdir={lowers}"]
    assert len(parse_options(options).data) > 4096
    assert overlay_needs_compaction(options, page_size=4096)
    _, compacted = compact_lowerdir(options)
    assert len(parse_options(compacted).data) < 4096 - 512


def test_error_messages_name_the_mount_like_containerd() -> None:
    error = MountError("overlay", "overlay", "/run/b/rootfs", "no such file or directory", 2)
    assert str(error) == (
        "failed to mount rootfs component overlay overlay on /run/b/rootfs: "
        "no such file or directory"
    )
    assert (error.mount_type, error.source, error.target, error.errno) == (
        "overlay",
        "overlay",
        "/run/b/rootfs",
        2,
    )
    assert str(UnmountError("/run/b/rootfs", 16)) == (
        "failed to unmount /run/b/rootfs: device or resource busy"
    )
