"""The CRI log writer: exact records (conmon §8.2 and containerd CRI), size caps, reopen, and a
kubelet-style reader getting every stream's bytes back exactly."""

from __future__ import annotations

import calendar
import contextlib
import itertools
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyshim import logs
from pyshim.logs import CriLogWriter, Timestamper, format_timestamp
from pyshim.logs.writer import _has_long_line
from tests import cri_log_reader as reader
from tests.conftest import FUZZ_INPUTS

FUZZ = settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow], deadline=None)
T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z
STAMP0 = b"2023-11-14T22:13:20.000000000Z"


def ns(text: str) -> int:
    """ns since the epoch of a UTC `YYYY-MM-DDTHH:MM:SS.NNNNNNNNN`."""
    whole, fraction = text.split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) * 10**9 + int(fraction)


def fixed(*times: int) -> Callable[[], int]:
    """A clock returning the given times in turn, then the last one forever."""
    values = iter(times)
    last = [times[-1]]

    def clock() -> int:
        last[0] = next(values, last[0])
        return last[0]

    return clock


def ticking(start: int = T0, step: int = 1) -> Callable[[], int]:
    counter = itertools.count(start, step)
    return lambda: next(counter)


@contextlib.contextmanager
def zone(tz: str) -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def content(path: Path) -> bytes:
    return path.read_bytes()


# -- timestamps ----------------------------------------------------------------------------


def test_utc_timestamps_have_nine_digits_and_z() -> None:
    assert format_timestamp(T0 + 5) == "2023-11-14T22:13:20.000000005Z"
    assert format_timestamp(ns("2026-11-22T18:50:14.445719431")) == (
        "2026-11-22T18:50:14.445719431Z"
    )
    # Before the epoch the fraction still counts forward from the second.
    assert format_timestamp(-1) == "1969-12-31T23:59:59.999999999Z"


@pytest.mark.parametrize(
    ("tz", "utc", "local"),
    [
        ("UTC", "2026-11-22T18:50:14.445719431", "2026-11-22T18:50:14.445719431+00:00"),
        ("Asia/Kolkata", "2026-11-22T18:51:41.027975535", "2026-11-23T00:21:41.027975535+05:30"),
        (
            "America/St_Johns",
            "2026-11-22T18:51:40.917934825",
            "2026-11-22T15:21:40.917934825-03:30",
        ),
        # POSIX zone strings need no tzdata.
        ("IST-5:30", "2026-11-22T18:51:41.027975535", "2026-11-23T00:21:41.027975535+05:30"),
        ("XST+3:30", "2026-11-22T18:51:40.917934825", "2026-11-22T15:21:40.917934825-03:30"),
    ],
)
def test_local_timestamps_are_conmons(tz: str, utc: str, local: str) -> None:
    if "/" in tz and not Path("/usr/share/zoneinfo", tz).exists():
        pytest.skip(f"no tzdata for {tz}")
    with zone(tz):
        assert format_timestamp(ns(utc), "local") == local
        assert reader.parse_timestamp(local.encode()) == ns(utc)


def test_local_timestamps_follow_dst() -> None:
    with zone("CET-1CEST,M3.5.0,M10.5.0/3"):
        stamp = Timestamper("local")
        assert stamp(ns("2026-01-10T12:00:00.000000001")).endswith(b"+01:00")
        assert stamp(ns("2026-07-10T12:00:00.000000001")).endswith(b"+02:00")


def test_timestamper_cache_is_per_second() -> None:
    stamp = Timestamper()
    assert stamp(T0 + 999_999_999) == b"2023-11-14T22:13:20.999999999Z"
    assert stamp(T0 + 1_000_000_000) == b"2023-11-14T22:13:21.000000000Z"
    assert stamp(T0) == STAMP0


def test_bad_timestamp_style() -> None:
    with pytest.raises(ValueError, match="style"):
        Timestamper("gmt")  # type: ignore[arg-type]


# -- record format -------------------------------------------------------------------------


def test_conmon_example_exactly(tmp_path: Path) -> None:
    """conmon §8.2.2: `echo hello; echo oops >&2; printf partial; sleep .3; printf 'a\\nb\\nc';
    sleep .2; echo` as the monitor read it, with conmon's zone-offset timestamps."""
    path = tmp_path / "ctr.log"
    times = [
        "2026-11-22T18:50:14.445719431",
        "2026-11-22T18:50:14.445942496",
        "2026-11-22T18:50:14.747778359",
        "2026-11-22T18:50:14.949703166",
    ]
    with zone("UTC"):
        writer = CriLogWriter(
            path, timestamps="local", buffer_lines=False, clock=fixed(*map(ns, times))
        )
        writer.write("stdout", b"hello\npartial")
        writer.write("stderr", b"oops\n")
        writer.write("stdout", b"a\nb\nc")
        writer.write("stdout", b"\n")
        writer.close()
    assert content(path) == (
        b"2026-11-22T18:50:14.445719431+00:00 stdout F hello\n"
        b"2026-11-22T18:50:14.445719431+00:00 stdout P partial\n"
        b"2026-11-22T18:50:14.445942496+00:00 stderr F oops\n"
        b"2026-11-22T18:50:14.747778359+00:00 stdout F a\n"
        b"2026-11-22T18:50:14.747778359+00:00 stdout F b\n"
        b"2026-11-22T18:50:14.747778359+00:00 stdout P c\n"
        b"2026-11-22T18:50:14.949703166+00:00 stdout F \n"
    )
    # conmon §8.2.4: a record is len(content incl. \n) + 45 bytes (+1 for P).
    assert [len(line) + 1 for line in content(path).split(b"\n")[:-1]] == [
        6 + 45, 7 + 45 + 1, 5 + 45, 2 + 45, 2 + 45, 1 + 45 + 1, 1 + 45,
    ]


def test_same_output_buffered_is_containerds(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=ticking(T0, 1_000))
    writer.write("stdout", b"hello\npartial")
    writer.write("stderr", b"oops\n")
    writer.write("stdout", b"a\nb\nc")
    writer.write("stdout", b"\n")
    writer.close()
    assert content(path) == (
        b"2023-11-14T22:13:20.000000000Z stdout F hello\n"
        b"2023-11-14T22:13:20.000001000Z stderr F oops\n"
        b"2023-11-14T22:13:20.000002000Z stdout F partiala\n"
        b"2023-11-14T22:13:20.000002000Z stdout F b\n"
        b"2023-11-14T22:13:20.000003000Z stdout F c\n"
    )


def test_any_bytes_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    data = b"tty line\r\n\x00nul \xff\xfe invalid utf-8  two  spaces \t\n\r\n"
    with CriLogWriter(path, clock=fixed(T0)) as writer:
        writer.write("stdout", data)
    assert content(path) == (
        STAMP0 + b" stdout F tty line\r\n"
        + STAMP0 + b" stdout F \x00nul \xff\xfe invalid utf-8  two  spaces \t\n"
        + STAMP0 + b" stdout F \r\n"
    )
    assert reader.streams(reader.read(path))["stdout"] == data


def test_lines_are_buffered_across_writes_per_stream(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    clock = ticking()
    writer = CriLogWriter(path, clock=clock)
    writer.write("stdout", b"out ")
    writer.write("stderr", b"err ")
    writer.write("stdout", b"one")
    writer.write("stderr", b"two\n")
    writer.write("stdout", b"\n\nnext")
    assert content(path) == (
        STAMP0 + b" stderr F err two\n"
        + b"2023-11-14T22:13:20.000000001Z stdout F out one\n"
        + b"2023-11-14T22:13:20.000000001Z stdout F \n"
    )
    writer.close()  # the pending "next" is a P record: a reader gets the exact bytes back
    assert content(path).endswith(b"2023-11-14T22:13:20.000000002Z stdout P next\n")
    assert reader.streams(reader.read(path)) == {
        "stdout": b"out one\n\nnext",
        "stderr": b"err two\n",
    }


def test_the_clock_is_read_once_per_write_that_makes_records(tmp_path: Path) -> None:
    calls = []

    def clock() -> int:
        calls.append(1)
        return T0

    writer = CriLogWriter(tmp_path / "ctr.log", clock=clock)
    writer.write("stdout", b"no newline yet")
    writer.write("stdout", b"")
    assert calls == []
    writer.write("stdout", b"\n" + b"x\n" * 500)
    assert calls == [1]
    writer.close()


def test_long_lines_are_cut_into_p_records_of_max_line(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_line=4, clock=fixed(T0))
    writer.write("stdout", b"abcd\nabcde\n0123456789ab\n\n")
    writer.write("stdout", b"xyz")
    writer.write("stdout", b"w")  # exactly max_line pending: containerd waits for the next byte
    writer.write("stdout", b"vu")
    writer.write("stdout", b"tsrqpon")
    writer.close()
    records = [(r.partial, r.content) for r in reader.read(path)]
    assert records == [
        (False, b"abcd\n"),  # exactly max_line: one F record
        (True, b"abcd"),
        (False, b"e\n"),
        (True, b"0123"),
        (True, b"4567"),
        (False, b"89ab\n"),
        (False, b"\n"),
        (True, b"xyzw"),
        (True, b"vuts"),
        (True, b"rqpo"),
        (True, b"n"),  # the rest at close
    ]


def test_unbuffered_long_pieces_are_cut_too(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_line=3, buffer_lines=False, clock=fixed(T0))
    writer.write("stderr", b"abcdefg\nhijklmn")
    writer.close()
    assert [(r.partial, r.content) for r in reader.read(path)] == [
        (True, b"abc"), (True, b"def"), (False, b"g\n"),
        (True, b"hij"), (True, b"klm"), (True, b"n"),
    ]


def test_max_line_zero_means_no_limit(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_line=0, clock=fixed(T0))
    writer.write("stdout", b"x" * 100_000)
    writer.write("stdout", b"y" * 100_000 + b"\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F " + b"x" * 100_000 + b"y" * 100_000 + b"\n"


def test_many_records_of_one_write_share_its_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_line=2, clock=ticking())
    writer.write("stdout", b"abcdefgh\n" * 100 + b"tail")
    writer.close()
    records = reader.read(path)
    assert len(records) == 401 + 1
    assert {r.time_ns for r in records[:-1]} == {T0}
    assert records[-1].time_ns == T0 + 1
    assert reader.streams(records)["stdout"] == b"abcdefgh\n" * 100 + b"tail"


def test_flush_writes_the_partial_line_now(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0))
    writer.write("stdout", b"prompt> ")
    writer.write("stderr", b"warn")
    writer.flush("stdout")
    assert content(path) == STAMP0 + b" stdout P prompt> \n"
    writer.flush("stdout")  # nothing pending: nothing written
    writer.write("stdout", b"answer\n")
    writer.flush()
    assert content(path) == (
        STAMP0 + b" stdout P prompt> \n"
        + STAMP0 + b" stdout F answer\n"
        + STAMP0 + b" stderr P warn\n"
    )
    writer.close()


def test_bad_stream_name(tmp_path: Path) -> None:
    writer = CriLogWriter(tmp_path / "ctr.log")
    with pytest.raises(ValueError, match="stdin"):
        writer.write("stdin", b"x\n")
    writer.close()


# -- file handling -------------------------------------------------------------------------


def test_file_is_appended_to_and_created_0640(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    path.write_bytes(b"old\n")
    with CriLogWriter(path, clock=fixed(T0)) as writer:
        writer.write("stdout", b"new\n")
        assert writer.size == 4 + len(STAMP0) + 14
    assert content(path) == b"old\n" + STAMP0 + b" stdout F new\n"
    fresh = tmp_path / "fresh.log"
    old_umask = os.umask(0o022)
    try:
        CriLogWriter(fresh).close()
    finally:
        os.umask(old_umask)
    assert fresh.stat().st_mode & 0o777 == 0o640
    assert fresh.read_bytes() == b""


def test_missing_directory_is_an_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "ctr.log"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        CriLogWriter(path)


def test_write_errors_are_raised_naming_the_path() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    writer = CriLogWriter("/dev/full")
    with pytest.raises(OSError, match="/dev/full") as caught:
        writer.write("stdout", b"x\n")
    assert caught.value.errno == 28  # ENOSPC
    writer.close()
    writer.close()


def test_a_torn_record_is_ended_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0))
    real_write = os.write
    calls = []

    def short_write(fd: int, data: bytes) -> int:
        calls.append("write")
        return real_write(fd, data[:10]) if len(calls) == 1 else real_write(fd, data)

    def full_disk(fd: int, buffers: list[bytes]) -> int:
        calls.append("writev")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", short_write)
    monkeypatch.setattr(os, "writev", full_disk)
    with pytest.raises(OSError, match=r"ctr\.log"):
        writer.write("stdout", b"lost\n")
    monkeypatch.undo()
    writer.write("stdout", b"kept\n")
    writer.close()
    assert calls == ["write", "writev"]
    assert content(path) == STAMP0[:10] + b"\n" + STAMP0 + b" stdout F kept\n"
    assert writer.size == 10 + 1 + len(STAMP0) + 15


def test_close_is_idempotent_and_flushes_both_streams(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0))
    writer.write("stderr", b"e")
    writer.write("stdout", b"o")
    writer.close()
    writer.close()
    assert writer.closed
    assert content(path) == STAMP0 + b" stdout P o\n" + STAMP0 + b" stderr P e\n"
    with pytest.raises(ValueError, match="closed"):
        writer.write("stdout", b"x\n")
    with pytest.raises(ValueError, match="closed"):
        writer.reopen()


def test_reopen_after_rotation(tmp_path: Path) -> None:
    """kubelet rotation: rename the file away, ReopenContainerLog, compress the old one."""
    path = tmp_path / "ctr.log"
    rotated = tmp_path / "ctr.log.20261122-185014"
    writer = CriLogWriter(path, clock=fixed(T0))
    writer.write("stdout", b"one\ntw")
    os.rename(path, rotated)
    writer.write("stdout", b"o\nthr")  # still to the open (now rotated) file
    assert not path.exists()
    writer.reopen()
    assert content(path) == b""
    assert writer.size == 0
    writer.write("stdout", b"ee\nfour\n")
    writer.close()
    assert content(rotated) == STAMP0 + b" stdout F one\n" + STAMP0 + b" stdout F two\n"
    assert content(path) == STAMP0 + b" stdout F three\n" + STAMP0 + b" stdout F four\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, rotated.name]
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_reopen_without_rotation_empties_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0), sync=False)
    writer.write("stdout", b"gone\n")
    inode = path.stat().st_ino
    writer.reopen()
    assert content(path) == b""
    assert path.stat().st_ino != inode
    writer.write("stdout", b"kept\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F kept\n"


def test_failed_reopen_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0))
    assert writer.temp_path == f"{path}.{os.getpid()}.tmp"
    os.mkdir(writer.temp_path)  # neither created nor unlinked: the temp file cannot be made
    with pytest.raises(OSError, match=rf"ctr\.log\.{os.getpid()}\.tmp"):
        writer.reopen()
    writer.write("stdout", b"still here\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F still here\n"


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_reopen_never_follows_a_symlink_planted_at_the_temp_path(
    tmp_path: Path, dangling: bool
) -> None:
    """Running as root, truncating or creating through someone's symlink would be theirs to aim."""
    path = tmp_path / "ctr.log"
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    if not dangling:
        victim.write_bytes(b"precious\n")
        victim.chmod(0o600)
    writer = CriLogWriter(path, clock=fixed(T0), sync=False)
    writer.write("stdout", b"old\n")
    os.symlink(victim, writer.temp_path)
    writer.reopen()
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"precious\n"
        assert victim.stat().st_mode & 0o777 == 0o600
    assert not path.is_symlink()
    assert not os.path.lexists(writer.temp_path)
    writer.write("stdout", b"new\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctr.log", "elsewhere"]


def test_reopen_replaces_a_stale_temp_file(tmp_path: Path) -> None:
    """A writer that died between create and rename left its temp file (same pid, later)."""
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, clock=fixed(T0), sync=False)
    Path(writer.temp_path).write_bytes(b"stale\n")
    writer.reopen()
    writer.write("stdout", b"fresh\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F fresh\n"
    assert not os.path.lexists(writer.temp_path)


# -- size caps -------------------------------------------------------------------------------


def _record_of(size: int, index: int) -> bytes:
    """Content making a `size`-byte F record with conmon's 35-character timestamps."""
    return f"{index:02d}".ljust(size - 46, "x").encode() + b"\n"


def test_log_size_max_truncates(tmp_path: Path) -> None:
    """conmon §8.2.5: --log-size-max 300, twelve 79-byte records."""
    path = tmp_path / "ctr.log"
    sizes = []
    with zone("UTC"):
        writer = CriLogWriter(path, max_size=300, timestamps="local", clock=fixed(T0))
        for index in range(1, 13):
            writer.write("stdout", _record_of(79, index))
            sizes.append(path.stat().st_size)
        writer.close()
    assert sizes == [79, 158, 237] * 4
    records = reader.read(path)
    assert [r.content[:2] for r in records] == [b"10", b"11", b"12"]


def test_log_size_max_within_one_write_and_counting_the_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    path.write_bytes(b"x" * 250)
    with zone("UTC"):
        writer = CriLogWriter(path, max_size=300, timestamps="local", clock=fixed(T0))
        writer.write("stdout", b"".join(_record_of(79, i) for i in range(1, 13)))
        writer.close()
    assert [r.content[:2] for r in reader.read(path)] == [b"10", b"11", b"12"]


def test_a_record_larger_than_log_size_max_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_size=50, clock=fixed(T0))
    writer.write("stdout", b"small\n")
    writer.write("stdout", b"y" * 100 + b"\n")
    writer.close()
    assert content(path) == STAMP0 + b" stdout F " + b"y" * 100 + b"\n"


def test_log_size_max_rotation_keeps_buffered_partials(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_size=100, clock=fixed(T0))
    writer.write("stderr", b"half ")
    writer.write("stdout", b"a" * 50 + b"\n")
    writer.write("stdout", b"b" * 50 + b"\n")  # truncates first
    writer.write("stderr", b"line\n")  # truncates again; the buffered half is not lost
    writer.close()
    assert reader.streams(reader.read(path)) == {"stdout": b"", "stderr": b"half line\n"}


@pytest.mark.parametrize("one_write", [False, True])
def test_log_global_size_max_drops(tmp_path: Path, one_write: bool) -> None:
    """conmon §8.2.6: --log-global-size-max 200, 52-byte records: four written."""
    path = tmp_path / "ctr.log"
    chunks = [_record_of(52, i) for i in range(6)]
    with zone("UTC"):
        writer = CriLogWriter(path, max_total=200, timestamps="local", clock=fixed(T0))
        for chunk in [b"".join(chunks)] if one_write else chunks:
            writer.write("stdout", chunk)
        writer.write("stderr", b"also dropped\n")
        writer.close()
    assert len(content(path)) == 4 * 52
    assert len(reader.read(path)) == 4
    assert writer.total == 208
    assert writer.dropped == 3


def test_log_global_size_max_reached_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    with zone("UTC"):
        writer = CriLogWriter(path, max_total=104, timestamps="local", clock=fixed(T0))
        for index in range(3):
            writer.write("stdout", _record_of(52, index))
        writer.close()
    assert len(content(path)) == 104
    assert writer.dropped == 1


def test_log_global_size_max_survives_truncation(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = CriLogWriter(path, max_size=100, max_total=150, clock=fixed(T0))
    for index in range(5):
        writer.write("stdout", b"%d" % index + b"z" * 40 + b"\n")
    writer.close()
    # 82-byte records: the 1st fills the file, the 2nd truncates it and crosses max_total.
    assert [r.content[:1] for r in reader.read(path)] == [b"1"]
    assert writer.total == 164


# -- properties ------------------------------------------------------------------------------

_chunk = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b" ", b"\x00", b"\xff"]), max_size=40)
    .map(b"".join),
)
_writes = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), _chunk), max_size=30)
_max_line = st.one_of(st.integers(1, 64), st.just(0), st.just(logs.DEFAULT_MAX_LINE))


def _records(data: bytes) -> list[bytes]:
    """A log file's records, each with its LF (not splitlines: content may hold \\r)."""
    return [line + b"\n" for line in data.split(b"\n")[:-1]]


def _run(
    directory: str,
    name: str,
    writes: list[tuple[str, bytes]],
    flush_at: int | None = None,
    **options: Any,
) -> tuple[Path, CriLogWriter]:
    path = Path(directory, name)
    writer = CriLogWriter(path, clock=ticking(T0, 999_999_937), sync=False, **options)
    for index, (stream, chunk) in enumerate(writes):
        if index == flush_at:
            writer.flush(stream)
        writer.write(stream, chunk)
    writer.close()
    return path, writer


@FUZZ
@given(body=st.lists(st.sampled_from([b"a", b"bcd", b"\n"]), max_size=80).map(b"".join),
       max_line=st.integers(1, 20))
def test_long_line_check_matches_splitting(body: bytes, max_line: int) -> None:
    FUZZ_INPUTS["logs: long line check"] += 1
    expected = max(map(len, body.split(b"\n"))) > max_line
    assert _has_long_line(body, max_line) == expected


@FUZZ
@given(writes=_writes, max_line=_max_line, buffer_lines=st.booleans(), flush_at=st.integers(0, 30))
def test_streams_round_trip_exactly(
    writes: list[tuple[str, bytes]], max_line: int, buffer_lines: bool, flush_at: int
) -> None:
    FUZZ_INPUTS["logs: CRI log round trip"] += 1
    with tempfile.TemporaryDirectory() as directory:
        path, _ = _run(
            directory, "ctr.log", writes, flush_at, max_line=max_line, buffer_lines=buffer_lines
        )
        records = reader.read(path)
    expected = {
        name: b"".join(chunk for stream, chunk in writes if stream == name)
        for name in ("stdout", "stderr")
    }
    assert reader.streams(records) == expected
    times = [r.time_ns for r in records]
    assert times == sorted(times)
    for record in records:
        length = len(record.content) - (not record.partial)
        assert not max_line or length <= max_line
        assert record.partial or record.content.endswith(b"\n")
        assert b"\n" not in record.content[:-1]
    if buffer_lines:
        # A P record is a cut of exactly max_line bytes, or a flushed rest: at the explicit
        # flush() or at close() (then it is the stream's last record).
        flushed = flush_at < len(writes)
        for name in ("stdout", "stderr"):
            own = [r for r in records if r.stream == name]
            rests = [r for r in own if r.partial and len(r.content) != max_line]
            assert len(rests) <= 1 + flushed
            if rests and not flushed:
                assert rests[-1] is own[-1]


@FUZZ
@given(
    writes=_writes,
    max_line=_max_line,
    buffer_lines=st.booleans(),
    max_size=st.integers(1, 600),
    max_total=st.integers(1, 3000),
)
def test_size_caps_keep_a_suffix_or_prefix_of_the_records(
    writes: list[tuple[str, bytes]],
    max_line: int,
    buffer_lines: bool,
    max_size: int,
    max_total: int,
) -> None:
    FUZZ_INPUTS["logs: CRI log size caps"] += 1
    common = {"max_line": max_line, "buffer_lines": buffer_lines}
    with tempfile.TemporaryDirectory() as directory:
        full_path, _ = _run(directory, "full.log", writes, **common)
        capped_path, capped = _run(directory, "capped.log", writes, max_size=max_size, **common)
        total_path, total = _run(directory, "total.log", writes, max_total=max_total, **common)
        full, capped_bytes, total_bytes = (
            content(p) for p in (full_path, capped_path, total_path)
        )
    lines = _records(full)
    # max_size (§8.2.5): replay the rule on the records of the uncapped run.
    size, first = 0, 0
    for index, line in enumerate(lines):
        if size + len(line) > max_size:
            size, first = 0, index
        size += len(line)
    assert _records(capped_bytes) == lines[first:]
    assert len(capped_bytes) <= max_size or len(lines) - first == 1
    assert capped.total == len(full)
    # max_total (§8.2.6): the first records, the one crossing the limit whole.
    written, count = 0, 0
    for line in lines:
        if written >= max_total:
            break
        written += len(line)
        count += 1
    assert _records(total_bytes) == lines[:count]
    assert total.total == written
    assert total.dropped == len(lines) - count
