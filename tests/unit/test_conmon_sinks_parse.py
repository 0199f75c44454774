"""Pure parts of the conmon monitor's sinks: `-l` values (spec §8.1), journal entry encoding
(§18.4), `ctl`/`winsz` lines (§10) and the attach symlink length rule (§9.1)."""

from __future__ import annotations

import struct

import pytest

from pyshim.conmon.attach import attach_link
from pyshim.conmon.ctl import (
    REOPEN_LOGS,
    RESIZE,
    CtlMessage,
    LineBuffer,
    parse_ctl_line,
    parse_winsz_line,
)
from pyshim.conmon.logdrivers import (
    JournaldSink,
    LogConfig,
    LogDriverError,
    journal_field,
    parse_log_paths,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["k8s-file:/p/ctr.log"], LogConfig(k8s_file="/p/ctr.log")),
        (["/p/ctr.log"], LogConfig(k8s_file="/p/ctr.log")),
        ([":/p/ctr.log"], LogConfig(k8s_file="/p/ctr.log")),
        (["journald:"], LogConfig(journald=True)),
        (["journald"], LogConfig(journald=True)),
        (["journald:anything"], LogConfig(journald=True)),
        (["passthrough"], LogConfig(passthrough=True)),
        (["none"], LogConfig()),
        (["off:/x"], LogConfig()),
        (["null"], LogConfig()),
        # A path is cut at its next colon (conmon's quirk), empty tokens are skipped.
        (["k8s-file:/p/a:b"], LogConfig(k8s_file="/p/a")),
        (["k8s-file::/p/ctr.log"], LogConfig(k8s_file="/p/ctr.log")),
        # CRI-O: a plain path and journald; none leaves the others on; the last path wins.
        (["/var/log/x.log", "journald:"], LogConfig(k8s_file="/var/log/x.log", journald=True)),
        (["journald", "none"], LogConfig(journald=True)),
        (["k8s-file:/a", "/b"], LogConfig(k8s_file="/b")),
    ],
)
def test_log_path_values(values: list[str], expected: LogConfig) -> None:
    assert parse_log_paths(values) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "[conmon:e] Log driver not provided. Use --log-path"),
        (["k8s-file"], "[conmon:e]: k8s-file requires a filename"),
        (["k8s-file:"], "[conmon:e]: k8s-file requires a filename"),
        ([":"], "[conmon:e]: log-path must not be empty"),
        ([""], "[conmon:e]: log-path must not be empty"),
        (["syslog:/x"], "[conmon:e]: No such log driver syslog"),
        (["foo:"], "[conmon:e]: No such log driver foo"),
        (["/p/a:b"], "[conmon:e]: No such log driver /p/a"),
        # Errors come in the order of the values.
        (["k8s-file", "bogus:x"], "[conmon:e]: k8s-file requires a filename"),
    ],
)
def test_bad_log_path_values(values: list[str], message: str) -> None:
    with pytest.raises(LogDriverError) as raised:
        parse_log_paths(values)
    assert str(raised.value) == message


def test_passthrough_refuses_a_tty() -> None:
    assert parse_log_paths(["passthrough"], stdio_is_tty=False).passthrough
    with pytest.raises(LogDriverError, match="cannot use a tty with passthrough logging mode"):
        parse_log_paths(["passthrough"], stdio_is_tty=True)
    # Only passthrough cares.
    assert parse_log_paths(["/x"], stdio_is_tty=True) == LogConfig(k8s_file="/x")


def test_journal_fields() -> None:
    assert journal_field("PRIORITY", b"6") == b"PRIORITY=6\n"
    assert journal_field("MESSAGE", b"hi\n") == b"MESSAGE\n" + struct.pack("<Q", 3) + b"hi\n\n"


def test_journal_entry_fields_and_identifier() -> None:
    cid = "0123456789abcdef"
    sink = JournaldSink(cid, name="web", tag="t1", socket_path="/nonexistent")
    entry = sink.entry("stderr", b"oops\n", partial=False)
    assert entry == (b"MESSAGE\n" + struct.pack("<Q", 5) + b"oops\n\n"
                     b"CONTAINER_ID_FULL=0123456789abcdef\nPRIORITY=3\n"
                     b"CONTAINER_ID=0123456789ab\nCONTAINER_TAG=t1\nCONTAINER_NAME=web\n"
                     b"SYSLOG_IDENTIFIER=t1\n")
    partial = JournaldSink(cid, socket_path="/nonexistent").entry("stdout", b"x", partial=True)
    assert partial.endswith(b"PRIORITY=6\nCONTAINER_ID=0123456789ab\n"
                            b"SYSLOG_IDENTIFIER=0123456789ab\nCONTAINER_PARTIAL_MESSAGE=true\n")
    named = JournaldSink(cid, name="web", socket_path="/nonexistent").entry(
        "stdout", b"x", partial=False)
    assert b"SYSLOG_IDENTIFIER=web\n" in named


def test_journald_needs_a_long_container_id() -> None:
    with pytest.raises(LogDriverError) as raised:
        JournaldSink("0123456789ab")
    assert str(raised.value) == "[conmon:e] Container ID must be longer than 12 characters"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"1 40 100", CtlMessage(RESIZE, 40, 100)),
        (b"2 0 0", CtlMessage(REOPEN_LOGS, 0, 0)),
        (b"  1\t50 132", CtlMessage(RESIZE, 50, 132)),
        (b"1 40 100 trailing", CtlMessage(RESIZE, 40, 100)),  # sscanf ignores the rest
        (b"1 40", None),
        (b"x 1 2", None),
        (b"123", None),  # digits are taken greedily: one number, not three
        (b"3 0 0", None),  # unknown type
        (b"1 -1 80", None),  # not a window size
        (b"1 70000 80", None),
    ],
)
def test_ctl_lines(line: bytes, expected: CtlMessage | None) -> None:
    assert parse_ctl_line(line) == expected


def test_winsz_lines() -> None:
    assert parse_winsz_line(b"40 100") == (40, 100)
    assert parse_winsz_line(b"40") is None
    assert parse_winsz_line(b"-4 100") is None


def test_line_buffer_handles_each_line_and_keeps_the_incomplete_one() -> None:
    lines = LineBuffer("ctl")
    assert lines.feed(b"1 40 100\n2 0 0\n1 5") == [b"1 40 100", b"2 0 0"]
    assert lines.feed(b"0 132") == []
    assert lines.feed(b"\n") == [b"1 50 132"]


def test_line_buffer_drops_a_line_too_long_to_be_a_message() -> None:
    lines = LineBuffer("ctl")
    assert lines.feed(b"9" * 150) == []
    assert lines.feed(b"9" * 150) == []  # over 199 bytes: dropped
    assert lines.feed(b"999\n1 40 100\n") == [b"1 40 100"]  # its tail is dropped too


def test_attach_symlink_is_shortened_at_exactly_107_bytes() -> None:
    socket_dir = "/run/" + "d" * 37  # 42 bytes
    cuuid = "c" * 64
    assert len(f"{socket_dir}/{cuuid}") == 107
    assert attach_link(socket_dir, cuuid) == f"{socket_dir}/{cuuid[:-1]}"
    assert attach_link(socket_dir, cuuid[:-1]) == f"{socket_dir}/{cuuid[:-1]}"
    assert attach_link("/var/run/crio", "abc") == "/var/run/crio/abc"
