"""conmon 2.1.6's command line as GLib parses it (spec §2.1, §2.3): pure parsing, no process.

Expected values were observed on the real conmon 2.1.6 (tests/integration/test_conmon_argv.py
runs both side by side for the error cases).
"""

from __future__ import annotations

import pytest

from pyshim.conmon.args import (
    ENTRIES,
    HelpRequested,
    ParseError,
    glib_print,
    help_text,
    parse,
    parse_c_integer,
)
from pyshim.conmon.options import ConmonOptions

UTF8 = "UTF-8"
ASCII = "ANSI_X3.4-1968"


def parsed(*words: str, codeset: str = UTF8) -> ConmonOptions:
    return ConmonOptions.from_values(parse([word.encode() for word in words], lambda: codeset))


def parse_error(*words: str | bytes, codeset: str = UTF8) -> bytes:
    raw = [word if isinstance(word, bytes) else word.encode() for word in words]
    with pytest.raises(ParseError) as caught:
        parse(raw, lambda: codeset)
    return caught.value.reason


def test_podman_run_command_line() -> None:
    options = parsed(
        "--api-version", "1", "-c", "ID", "-u", "ID", "-r", "/usr/sbin/runc", "-b", "/s",
        "-p", "/r/pidfile", "-n", "name", "--exit-dir", "/t/exits", "--full-attach",
        "-l", "k8s-file:/s/ctr.log", "--log-level", "warning",
        "--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
        "--runtime-arg=/r/oci-log", "--conmon-pidfile", "/r/conmon.pid",
        "--exit-command", "/usr/bin/podman", "--exit-command-arg", "--root",
        "--exit-command-arg", "/var/lib/containers/storage", "--exit-command-arg", "--rm",
    )
    assert options.api_version and options.full_attach and not options.exec
    assert (options.cid, options.cuuid, options.runtime) == ("ID", "ID", "/usr/sbin/runc")
    assert options.log_paths == ("k8s-file:/s/ctr.log",)
    assert options.runtime_args == ("--log-format=json", "--log", "/r/oci-log")
    assert options.exit_command_args == ("--root", "/var/lib/containers/storage", "--rm")
    assert options.conmon_pidfile == "/r/conmon.pid"


def test_defaults_are_conmons() -> None:
    options = parsed("-c", "x")
    assert (options.log_size_max, options.log_global_size_max) == (-1, -1)
    assert (options.timeout, options.exit_delay) == (0, 0)
    assert options.socket_dir_path == "/var/run/crio"
    assert options.bundle is None and options.log_level is None


def test_strings_last_wins_arrays_accumulate_in_order() -> None:
    options = parsed("-c", "a", "--cid", "b", "--pidfile", "p1", "-p", "p2",
                     "--restore-arg", "A", "--runtime-opt", "B", "--restore-arg", "C")
    assert options.cid == "b"
    assert options.container_pidfile == "p2"  # --pidfile is a hidden alias
    assert options.runtime_opts == ("A", "B", "C")  # --restore-arg shares --runtime-opt's array


def test_flags_ignore_an_attached_value() -> None:
    options = parsed("--sync=0", "--terminal=", "--api-version=no", "-c", "x")
    assert options.sync and options.terminal and options.api_version


def test_positional_words_are_ignored_and_double_dash_ends_options() -> None:
    options = parsed("stray", "-", "-c", "x", "1", "-t", "--", "--bogus", "-i")
    assert options.cid == "x" and options.terminal and not options.stdin


@pytest.mark.parametrize(("words", "attribute", "value"), [
    (["-ti"], "stdin", True),
    (["-tc", "x"], "cid", "x"),
    (["-ct", "x"], "cid", "x"),  # the value is the next word, wherever the letter is
    (["-c", "--bogus"], "cid", "--bogus"),  # a value is taken whatever it looks like
    (["--cid", "--"], "cid", "--"),
    (["--cid=x=y"], "cid", "x=y"),
    (["--cid="], "cid", ""),
    (["-0", "/persist"], "persist_dir", "/persist"),
])
def test_glib_value_rules(words: list[str], attribute: str, value: object) -> None:
    assert getattr(parsed(*words), attribute) == value


@pytest.mark.parametrize(("words", "reason"), [
    (["--bogus"], b"Unknown option --bogus"),
    (["-z"], b"Unknown option -z"),
    (["-tz"], b"Unknown option -tz"),  # the whole word
    (["-t=1"], b"Unknown option -t=1"),
    (["---cid", "x"], b"Unknown option ---cid"),
    (["--help=x"], b"Unknown option --help=x"),
    (["--he"], b"Unknown option --he"),  # no abbreviations
    (["--log-label", "a=b"], b"Unknown option --log-label"),  # 2.2's options: not in 2.1.6
    (["-c"], b"Missing argument for -c"),
    (["-cfoo"], b"Missing argument for -c"),
    (["-c=foo"], b"Missing argument for -c"),
    (["--cid"], b"Missing argument for --cid"),
    (["-cu", "x", "y"], b"Error parsing option -u"),  # one value-taking letter per group
    (["--bogus", "--version"], b"Unknown option --bogus"),  # errors come before --version
    (["-c", "x", "--version", "-c"], b"Missing argument for -c"),
])
def test_glib_errors(words: list[str], reason: bytes) -> None:
    assert parse_error(*words) == reason


@pytest.mark.parametrize("words", [["-h"], ["-?"], ["--help"], ["--help-all"], ["-th"],
                                   ["-h", "--bogus"], ["-c", "x", "-ht"]])
def test_help_wins_where_it_is_met(words: list[str]) -> None:
    with pytest.raises(HelpRequested):
        parse([word.encode() for word in words], lambda: UTF8)


def test_help_is_not_reached_after_an_error() -> None:
    assert parse_error("--bogus", "-h") == b"Unknown option --bogus"
    assert parse_error("-zh") == b"Unknown option -zh"


@pytest.mark.parametrize(("text", "value"), [
    ("0x10", 16), ("0X10", 16), ("-0x10", -16), ("010", 8), ("+5", 5), ("-5", -5), (" 5", 5),
    ("\t\n\v\f\r5", 5), ("0", 0), ("9223372036854775807", 2**63 - 1),
    ("-9223372036854775808", -(2**63)),
])
def test_integers_as_strtol_base_0(text: str, value: int) -> None:
    assert parse_c_integer(text.encode(), b"--log-size-max", bits=64) == value


@pytest.mark.parametrize("text", ["08", "5 ", "10k", "", " ", "0x", "0xg", "- 5", "+-5", "1e3",
                                  "5\n", "٣"])
def test_integer_garbage(text: str) -> None:
    raw = text.encode()
    assert parse_error("-c", "x", "-T", raw) == (
        b"Cannot parse integer value \xe2\x80\x9c" + raw + b"\xe2\x80\x9d for -T")


@pytest.mark.parametrize(("option", "text"), [
    ("--timeout", "2147483648"), ("--exit-delay", "-2147483649"), ("-T", "99999999999"),
    ("--log-size-max", "9223372036854775808"), ("--log-global-size-max", "-99999999999999999999"),
])
def test_integer_out_of_range(option: str, text: str) -> None:
    assert parse_error(option, text) == (
        b"Integer value \xe2\x80\x9c" + text.encode() + b"\xe2\x80\x9d for "
        + option.encode() + b" out of range")


def test_int_bounds() -> None:
    assert parsed("--timeout", "2147483647").timeout == 2**31 - 1
    assert parsed("--exit-delay", "-2147483648").exit_delay == -(2**31)


def test_strings_are_converted_from_the_locale() -> None:
    assert parsed("-c", "é", codeset=UTF8).cid == "é"
    assert parse_error("-c", "é", codeset=ASCII) == b"Invalid byte sequence in conversion input"
    assert parse_error("-n", b"\xff", codeset=UTF8) == b"Invalid byte sequence in conversion input"
    assert parsed("-c", "x", codeset=ASCII).cid == "x"
    # Integers are not converted: the raw bytes appear in the message.
    assert parse_error("-T", b"\xff", codeset=ASCII).startswith(b"Cannot parse integer value")


def test_codeset_is_only_asked_for_non_ascii() -> None:
    def refuse() -> str:
        raise AssertionError("asked for the locale")

    assert parse([b"-c", b"x", b"-l", b"none"], refuse)["cid"] == "x"


def test_glib_print_in_the_locale() -> None:
    quoted = b"value \xe2\x80\x9c\xc3\xa9\xe2\x80\x9d\n"
    assert glib_print(quoted, UTF8) == quoted
    assert glib_print(quoted, ASCII) == b"value ???\n"
    assert glib_print(b"a\x7f\x01\xe2\x80\x9c", ASCII) == b"a\x7f\x01?"
    assert glib_print(b"\xe2\x80\x9ca\xff\x01\t\r\n", ASCII) == (
        b"[Invalid UTF-8] \\xe2\\x80\\x9ca\\xff\\x01\t\r\n")
    assert glib_print(b"x\ry", ASCII) == b"x\ry"  # valid UTF-8: converted, not escaped


def test_help_lists_every_visible_long_option() -> None:
    text = help_text()
    assert text.startswith("Usage:\n  conmon [OPTION\u2026] - conmon utility\n\n".encode())
    for entry in ENTRIES:
        assert (f"--{entry.long} ".encode() in text) != entry.hidden
    assert b"--log-global-size-max" in text  # what CRI-O greps for
    assert b"  -p, --container-pidfile      PID file for the initial pid" in text
