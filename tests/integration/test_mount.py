"""Real rootfs mounts as root: bind, tmpfs, overlay (with lowerdir compaction), loop, rollback
and unmounting. Every test leaves nothing mounted, whatever happens."""

from __future__ import annotations

import asyncio
import errno
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyshim.mount import (
    Mount,
    MountError,
    mount_all,
    mount_all_async,
    unmount_all,
    unmount_all_async,
)
from pyshim.mount.execute import _private_cwd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


def mount_table() -> list[tuple[str, str, str, str]]:
    """(mount point, optional fields, fstype, source) for each line of our mountinfo."""
    rows = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            head, _, tail = line.partition(" - ")
            fields, extra = head.split(), tail.split()
            point = fields[4].replace("\\040", " ")
            rows.append((point, " ".join(fields[6:]), extra[0], extra[1]))
    return rows


def mounts_at(path: Path) -> int:
    return sum(point == str(path) for point, *_ in mount_table())


def detach_everything_under(base: Path) -> None:
    for _ in range(100):
        points = [p for p, *_ in mount_table() if p == str(base) or p.startswith(f"{base}/")]
        if not points:
            return
        # Newest (last listed) first, lazily, so nothing busy can stop the clean-up.
        subprocess.run(["umount", "-l", points[-1]], check=False, capture_output=True)
    raise AssertionError(f"could not unmount everything under {base}")


@pytest.fixture
def base() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pyshim-mnt-", dir="/tmp"))
    try:
        yield directory
    finally:
        detach_everything_under(directory)
        shutil.rmtree(directory)


def make_dirs(base: Path, *names: str) -> list[Path]:
    paths = [base / name for name in names]
    for path in paths:
        path.mkdir(parents=True)
    return paths


def test_read_only_bind_refuses_writes(base: Path) -> None:
    source, target = make_dirs(base, "src", "rootfs")
    (source / "hello").write_text("hi")
    mount_all(
        [Mount(type="bind", source=str(source), options=["rbind", "ro", "rprivate"])], str(target)
    )
    assert mounts_at(target) == 1
    assert (target / "hello").read_text() == "hi"
    with pytest.raises(OSError) as caught:
        (target / "new").write_text("x")
    assert caught.value.errno == errno.EROFS
    assert os.statvfs(target).f_flag & os.ST_RDONLY
    # The source itself stays writable; only the bind is read-only.
    (source / "other").write_text("ok")
    assert (target / "other").read_text() == "ok"
    # rprivate: the new mount is in no peer group.
    (optional,) = [opt for point, opt, *_ in mount_table() if point == str(target)]
    assert "shared:" not in optional
    unmount_all(str(target))
    assert mounts_at(target) == 0


def test_tmpfs_with_flags_and_data(base: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    options = ["nosuid", "nodev", "noexec", "mode=750", "size=1m"]
    mount_all([Mount(type="tmpfs", source="tmpfs", options=options)], str(target))
    try:
        vfs = os.statvfs(target)
        assert vfs.f_flag & os.ST_NOSUID and vfs.f_flag & os.ST_NODEV and vfs.f_flag & os.ST_NOEXEC
        assert vfs.f_blocks * vfs.f_frsize == 1 << 20
        assert os.stat(target).st_mode & 0o777 == 0o750
        assert [fstype for point, _, fstype, _ in mount_table() if point == str(target)] == [
            "tmpfs"
        ]
    finally:
        unmount_all(str(target))
    assert mounts_at(target) == 0


def test_overlay_merges_layers_and_writes_to_upper(base: Path) -> None:
    lower1, lower2, upper, work, target = make_dirs(
        base, "s/1/fs", "s/2/fs", "s/3/fs", "s/3/work", "rootfs"
    )
    (lower1 / "from-1").write_text("one")
    (lower2 / "from-2").write_text("two")
    (lower1 / "shadowed").write_text("lower")
    (lower2 / "shadowed").write_text("upper layer wins")
    options = ["index=off", f"workdir={work}", f"upperdir={upper}", f"lowerdir={lower2}:{lower1}"]
    mount_all([Mount(type="overlay", source="overlay", options=options)], str(target))
    try:
        assert sorted(os.listdir(target)) == ["from-1", "from-2", "shadowed"]
        assert (target / "shadowed").read_text() == "upper layer wins"
        (target / "written").write_text("new")
        assert (upper / "written").read_text() == "new"
        assert not (lower1 / "written").exists()
    finally:
        unmount_all(str(target))
    assert mounts_at(target) == 0


def test_overlay_with_a_page_of_lowerdirs_is_compacted(base: Path) -> None:
    snapshots = base / ("snapshots-" + "x" * 60)
    layers = make_dirs(snapshots, *(f"{n}/fs" for n in range(100, 160)))
    upper, work, target = make_dirs(base, "up/fs", "up/work", "rootfs")
    for n, layer in enumerate(layers):
        (layer / f"layer-{n}").write_text(str(n))
    lowerdir = ":".join(str(layer) for layer in layers)
    assert len(lowerdir) > os.sysconf("SC_PAGE_SIZE")
    cwd = os.getcwd()
    options = [f"workdir={work}", f"upperdir={upper}", f"lowerdir={lowerdir}"]
    mount_all([Mount(type="overlay", source="overlay", options=options)], str(target))
    try:
        assert os.getcwd() == cwd
        assert len(os.listdir(target)) == len(layers)
        assert (target / "layer-59").read_text() == "59"
    finally:
        unmount_all(str(target))


def test_data_longer_than_a_page_is_refused(base: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    with pytest.raises(MountError, match="too long"):
        mount_all([Mount(type="tmpfs", source="tmpfs", options=["x" * 5000])], str(target))
    assert mounts_at(target) == 0


def test_failing_mount_rolls_back_the_earlier_ones(base: Path) -> None:
    source, target = make_dirs(base, "src", "rootfs")
    missing = base / "missing"
    mounts = [
        Mount(type="bind", source=str(source), options=["rbind"]),
        Mount(type="tmpfs", source="tmpfs", options=["size=1m"]),
        Mount(type="bind", source=str(missing), options=["rbind", "ro"]),
    ]
    with pytest.raises(MountError) as caught:
        mount_all(mounts, str(target))
    assert mounts_at(target) == 0
    assert str(caught.value) == (
        f"failed to mount rootfs component bind {missing} on {target}: no such file or directory"
    )
    assert caught.value.errno == errno.ENOENT


def test_relative_targets_stay_inside_the_rootfs(base: Path) -> None:
    source, outside, target = make_dirs(base, "src", "outside", "rootfs")
    make_dirs(source, "proc", "inner", "outside")
    # A hostile image: symlinks that would lead out of the rootfs if followed on the host.
    (source / "abs").symlink_to("/inner")
    (source / "up").symlink_to("../outside")
    mounts = [
        Mount(type="bind", source=str(source), options=["rbind"]),
        Mount(type="tmpfs", source="tmpfs", target="proc", options=["size=1m"]),
        Mount(type="tmpfs", source="tmpfs", target="abs", options=["size=1m"]),
        Mount(type="tmpfs", source="tmpfs", target="./up/", options=["size=1m"]),
    ]
    mount_all(mounts, str(target))
    try:
        assert mounts_at(target / "proc") == 1
        assert mounts_at(target / "inner") == 1
        assert mounts_at(target / "outside") == 1
        assert mounts_at(outside) == 0
    finally:
        for sub in ("outside", "inner", "proc", ""):
            unmount_all(str(target / sub))
    assert mounts_at(target) == 0


def test_unmount_all_removes_stacked_mounts(base: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    mount_all([Mount(type="tmpfs", source="tmpfs", options=["size=1m"])] * 3, str(target))
    assert mounts_at(target) == 3
    unmount_all(str(target))
    assert mounts_at(target) == 0


def test_unmount_all_async_removes_stacked_mounts(base: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    mount_all([Mount(type="tmpfs", source="tmpfs", options=["size=1m"])] * 2, str(target))
    asyncio.run(unmount_all_async(str(target)))
    assert mounts_at(target) == 0


def test_unmount_all_of_nothing_is_a_no_op(base: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    unmount_all(str(target))
    unmount_all(str(base / "does-not-exist"))
    unmount_all("")
    asyncio.run(unmount_all_async(str(target)))
    asyncio.run(unmount_all_async(str(base / "does-not-exist")))
    assert target.is_dir()


def loops_backed_by(path: Path) -> list[str]:
    found = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            if Path(backing).read_text().strip() == str(path):
                found.append(backing)
        except OSError:
            continue  # detached meanwhile
    return found


def wait_for_no_loops(path: Path) -> list[str]:
    deadline = time.monotonic() + 10
    while (left := loops_backed_by(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.skipif(shutil.which("mkfs.ext2") is None, reason="needs mkfs.ext2")
@pytest.mark.parametrize("read_only", [False, True], ids=["rw", "ro"])
def test_loop_mount_attaches_and_autoclears(base: Path, read_only: bool) -> None:
    image = base / "disk.img"
    (target,) = make_dirs(base, "rootfs")
    with image.open("wb") as file:
        file.truncate(4 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True, capture_output=True)
    try:
        options = ["loop", "noatime", *(["ro"] if read_only else [])]
        mount_all([Mount(type="ext2", source=str(image), options=options)], str(target))
        try:
            (source,) = [src for point, _, _, src in mount_table() if point == str(target)]
            assert source.startswith("/dev/loop")
            assert len(loops_backed_by(image)) == 1
            if read_only:
                with pytest.raises(OSError) as caught:
                    (target / "file").write_text("refused")
                assert caught.value.errno == errno.EROFS
            else:
                (target / "file").write_text("on a loop device")
        finally:
            unmount_all(str(target))
        assert mounts_at(target) == 0
    finally:
        assert wait_for_no_loops(image) == []


def test_failed_loop_mount_releases_the_device(base: Path) -> None:
    image = base / "garbage.img"
    image.write_bytes(b"\0" * (1 << 20))
    (target,) = make_dirs(base, "rootfs")
    with pytest.raises(MountError):
        mount_all([Mount(type="ext2", source=str(image), options=["loop"])], str(target))
    assert mounts_at(target) == 0
    assert wait_for_no_loops(image) == []


def test_fuse_without_its_helper_is_a_clear_error(base: Path) -> None:
    if shutil.which("mount.fuse3"):
        pytest.skip("mount.fuse3 is installed; its behaviour is not what this test checks")
    (target,) = make_dirs(base, "rootfs")
    mount = Mount(type="fuse3.sshfs", source="localhost:/", options=["reconnect"])
    with pytest.raises(MountError, match=r"mount helper \[mount.fuse3 localhost:/ .* -t sshfs\]"):
        mount_all([mount], str(target))
    assert mounts_at(target) == 0


# -- mount_all_async ---------------------------------------------------------------------------

# A fuse helper that blocks until the test lets it go (or gives up after ~20 s, so that an
# implementation blocking the loop fails instead of hanging), then mounts a tmpfs.
FAKE_FUSE_HELPER = """#!/bin/sh
# mount.fuse SOURCE TARGET -o OPTION... -t SUBTYPE; SOURCE is the test's state directory.
touch "$1/started"
i=0
while [ ! -e "$1/release" ]; do
    i=$((i + 1))
    [ "$i" -gt 2000 ] && { echo "never released" >&2; exit 1; }
    sleep 0.01
done
mount -t tmpfs -o size=1m fake "$2" || exit
touch "$1/finished"
"""


@pytest.fixture
def fake_fuse(base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory whose `started`/`release` files talk to the fake helper on PATH."""
    bin_dir, state = make_dirs(base, "bin", "state")
    helper = bin_dir / "mount.fuse"
    helper.write_text(FAKE_FUSE_HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return state


class Ticker:
    """Counts turns of the event loop; lets the fake helper go once the loop has turned
    `turns` times after the helper started (which it cannot if the mount blocks the loop)."""

    def __init__(self, state: Path, turns: int = 20) -> None:
        self.state = state
        self.turns = turns
        self.ticks = 0
        self.ticks_while_blocked = 0

    async def run(self, release: bool = True) -> None:
        while True:
            self.ticks += 1
            if (self.state / "started").exists():
                self.ticks_while_blocked += 1
                if release and self.ticks_while_blocked >= self.turns:
                    (self.state / "release").touch()
            await asyncio.sleep(0.001)


def test_a_slow_fuse_helper_does_not_block_the_loop(base: Path, fake_fuse: Path) -> None:
    (target,) = make_dirs(base, "rootfs")
    mount = Mount(type="fuse.fake", source=str(fake_fuse), options=["ro"])

    async def scenario() -> Ticker:
        ticker = Ticker(fake_fuse)
        ticking = asyncio.ensure_future(ticker.run())
        try:
            async with asyncio.timeout(60):
                await mount_all_async([mount], str(target))
        finally:
            ticking.cancel()
        return ticker

    ticker = asyncio.run(scenario())
    try:
        assert ticker.ticks_while_blocked >= ticker.turns
        assert [fstype for point, _, fstype, _ in mount_table() if point == str(target)] == [
            "tmpfs"
        ]
    finally:
        unmount_all(str(target))
    assert mounts_at(target) == 0


def test_a_cancelled_mount_leaves_nothing_mounted(base: Path, fake_fuse: Path) -> None:
    source, target = make_dirs(base, "src", "rootfs")
    mounts = [
        Mount(type="bind", source=str(source), options=["rbind"]),
        Mount(type="fuse.fake", source=str(fake_fuse)),
    ]

    async def scenario() -> None:
        ticker = Ticker(fake_fuse)
        ticking = asyncio.ensure_future(ticker.run(release=False))
        mounting = asyncio.ensure_future(mount_all_async(mounts, str(target)))
        try:
            async with asyncio.timeout(60):
                while not (fake_fuse / "started").exists():
                    await asyncio.wait([mounting], timeout=0.005)
                mounting.cancel()
                (fake_fuse / "release").touch()
                with pytest.raises(asyncio.CancelledError):
                    await mounting
        finally:
            ticking.cancel()

    asyncio.run(scenario())
    # Had the cancelled call returned before the helper finished, its mount would appear now.
    deadline = time.monotonic() + 30
    while not (fake_fuse / "finished").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (fake_fuse / "finished").exists()
    # Rolled back: the helper's tmpfs and the bind under it.
    assert mounts_at(target) == 0


def test_async_failure_rolls_back_the_earlier_mounts(base: Path) -> None:
    source, target = make_dirs(base, "src", "rootfs")
    missing = base / "missing"
    mounts = [
        Mount(type="bind", source=str(source), options=["rbind"]),
        Mount(type="tmpfs", source="tmpfs", options=["size=1m"]),
        Mount(type="bind", source=str(missing), options=["rbind", "ro"]),
    ]
    with pytest.raises(MountError) as caught:
        asyncio.run(mount_all_async(mounts, str(target)))
    assert mounts_at(target) == 0
    assert caught.value.errno == errno.ENOENT


def test_async_overlay_compaction_keeps_the_loop_threads_cwd(base: Path) -> None:
    snapshots = base / ("snapshots-" + "x" * 60)
    layers = make_dirs(snapshots, *(f"{n}/fs" for n in range(100, 160)))
    upper, work, target = make_dirs(base, "up/fs", "up/work", "rootfs")
    for n, layer in enumerate(layers):
        (layer / f"layer-{n}").write_text(str(n))
    options = [f"workdir={work}", f"upperdir={upper}",
               "lowerdir=" + ":".join(str(layer) for layer in layers)]
    cwd = os.getcwd()
    seen: set[str] = set()

    async def watch_cwd() -> None:
        while True:
            seen.add(os.getcwd())
            await asyncio.sleep(0)

    async def scenario() -> None:
        watching = asyncio.ensure_future(watch_cwd())
        try:
            await mount_all_async([Mount(type="overlay", source="overlay", options=options)],
                                  str(target))
        finally:
            watching.cancel()

    asyncio.run(scenario())
    try:
        assert seen == {cwd}
        assert os.getcwd() == cwd
        assert (target / "layer-59").read_text() == "59"
    finally:
        unmount_all(str(target))


def test_the_mount_threads_chdir_moves_no_other_threads_cwd(base: Path) -> None:
    """What keeps the overlay chdir of mount_all_async's thread away from the loop thread."""
    (elsewhere,) = make_dirs(base, "elsewhere")
    cwd = os.getcwd()
    seen: list[str] = []
    chdir_done = threading.Event()
    checked = threading.Event()

    def worker() -> None:
        _private_cwd()
        os.chdir(elsewhere)
        seen.append(os.getcwd())
        chdir_done.set()
        checked.wait(30)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert chdir_done.wait(30)
        assert seen == [str(elsewhere)]
        assert os.getcwd() == cwd
    finally:
        checked.set()
        thread.join()
    assert os.getcwd() == cwd
