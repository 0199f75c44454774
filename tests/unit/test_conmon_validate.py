"""conmon 2.1.6's validation order and messages (spec §2.4, §8.1), with a host that only
answers questions (tests/integration/test_conmon_argv.py compares with the real conmon)."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest

from pyshim.conmon.args import parse
from pyshim.conmon.options import ConmonOptions
from pyshim.conmon.validate import (
    ConmonConfig,
    LogDrivers,
    LogLevel,
    Mode,
    ValidationError,
    validate,
)

RUNC = "/usr/sbin/runc"
VALID = ["-c", "cid", "-u", "cid", "-r", RUNC, "-l", "none"]


@dataclass
class FakeHost:
    executable: dict[str, int] = field(default_factory=lambda: {RUNC: 0})
    cwd: str | None = "/work"
    ttys: tuple[int, ...] = ()
    unopenable: dict[str, int] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)

    def access_executable(self, path: str) -> int:
        return self.executable.get(path, errno.ENOENT)

    def getcwd(self) -> str | None:
        return self.cwd

    def isatty(self, fd: int) -> bool:
        return fd in self.ttys

    def open_k8s_log(self, path: str) -> int:
        if path in self.unopenable:
            raise OSError(self.unopenable[path], "refused")
        self.opened.append(path)
        return 100 + len(self.opened)


def options(*words: str) -> ConmonOptions:
    return ConmonOptions.from_values(parse([word.encode() for word in words], lambda: "UTF-8"))


def check(*words: str, host: FakeHost | None = None,
          environ: dict[str, str] | None = None) -> ConmonConfig:
    return validate(options(*words), host or FakeHost(), environ or {})


def error(*words: str, host: FakeHost | None = None) -> bytes:
    with pytest.raises(ValidationError) as caught:
        check(*words, host=host)
    return caught.value.line


@pytest.mark.parametrize(("words", "line"), [
    (["-c", "x", "--log-level", "bad"], b"[conmon:e]: No such log level bad\n"),
    (["-c", "x", "--log-level", ""], b"[conmon:e]: No such log level \n"),
    (["-c", "x", "--log-level", "Info "], b"[conmon:e]: No such log level Info \n"),
    # the log level is checked first, then exec/restore/attach, then the ids
    (["-c", "x", "--log-level", "bad", "-e", "--restore", "r"],
     b"[conmon:e]: No such log level bad\n"),
    (["-c", "x", "-e", "--restore", "r", "--exec-attach"],
     b"[conmon:e] Cannot use 'exec' and 'restore' at the same time\n"),
    (["-c", "x", "--exec-attach"], b"[conmon:e] Attach can only be specified with exec\n"),
    (["-c", "x", "-e", "--exec-attach"],
     b"[conmon:e] Attach can only be specified for a non-legacy exec session\n"),
    (["-c", "x"], b"[conmon:e] Container UUID not provided. Use --cuuid\n"),
    (["-c", "x", "-e", "--api-version"], b"[conmon:e] Container UUID not provided. Use --cuuid\n"),
    (["-c", "x", "-e"], b"[conmon:e] Runtime path not provided. Use --runtime\n"),  # legacy exec
    (["-c", "x", "-u", "y", "-r", "/nonexistent"],
     b"[conmon:e]: Runtime path /nonexistent is not valid No such file or directory\n"),
    (["-c", "x", "-r", RUNC, "-e", "--exit-delay", "-1"],
     b"[conmon:e] Exec process spec path not provided. Use --exec-process-spec\n"),
    (["-c", "x", "-u", "y", "-r", RUNC, "--exit-delay", "-1", "-l", "bogus:x"],
     b"[conmon:e] Delay before invoking exit command must be greater than or equal to 0\n"),
    (["-c", "x", "-u", "y", "-r", RUNC], b"[conmon:e] Log driver not provided. Use --log-path\n"),
])
def test_order_and_messages(words: list[str], line: bytes) -> None:
    assert error(*words) == line


def test_runtime_errno_is_strerror() -> None:
    host = FakeHost(executable={"/etc/passwd": errno.EACCES})
    assert error("-c", "x", "-u", "y", "-r", "/etc/passwd", host=host) == (
        b"[conmon:e]: Runtime path /etc/passwd is not valid Permission denied\n")


def test_no_cwd() -> None:
    assert error(*VALID, host=FakeHost(cwd=None)) == (
        b"[conmon:e] Failed to get working directory\n")


@pytest.mark.parametrize(("value", "line"), [
    ("", b"[conmon:e]: log-path must not be empty\n"),
    (":", b"[conmon:e]: log-path must not be empty\n"),
    ("::", b"[conmon:e]: log-path must not be empty\n"),
    ("k8s-file", b"[conmon:e]: k8s-file requires a filename\n"),
    ("k8s-file:", b"[conmon:e]: k8s-file requires a filename\n"),
    ("foo:", b"[conmon:e]: No such log driver foo\n"),
    ("a:b:c", b"[conmon:e]: No such log driver a\n"),
    ("journald", b"[conmon:e] Container ID must be longer than 12 characters\n"),
])
def test_log_path_errors(value: str, line: bytes) -> None:
    assert error("-c", "x", "-u", "y", "-r", RUNC, "-l", value) == line


@pytest.mark.parametrize(("values", "drivers"), [
    (["none"], LogDrivers()),
    (["none:x", "off", "null"], LogDrivers()),
    (["/p/ctr.log"], LogDrivers(k8s_file="/p/ctr.log")),
    ([":/p/ctr.log"], LogDrivers(k8s_file="/p/ctr.log")),
    ([":none"], LogDrivers(k8s_file="none")),  # a file named none, as conmon has it
    (["k8s-file:/p/a:b"], LogDrivers(k8s_file="/p/a")),  # cut at the next colon
    (["k8s-file:/a", "/b"], LogDrivers(k8s_file="/b")),  # the last one
    (["passthrough:x"], LogDrivers(passthrough=True)),
    (["/p/ctr.log", "journald:"], LogDrivers(k8s_file="/p/ctr.log", journald=True)),
])
def test_log_drivers(values: list[str], drivers: LogDrivers) -> None:
    words = ["-c", "0123456789abc", "-u", "y", "-r", RUNC]
    for value in values:
        words += ["-l", value]
    assert check(*words).log_drivers == drivers


def test_every_log_path_is_parsed_before_the_file_is_opened() -> None:
    host = FakeHost(unopenable={"/missing/x": errno.ENOENT})
    assert error("-c", "x", "-u", "y", "-r", RUNC, "-l", "k8s-file:/missing/x", "-l", "bad:x",
                 host=host) == b"[conmon:e]: No such log driver bad\n"
    assert error("-c", "x", "-u", "y", "-r", RUNC, "-l", "k8s-file:/missing/x", host=host) == (
        b"[conmon:e]: Failed to open log file No such file or directory\n")


def test_log_tag_with_k8s_file_is_refused_after_opening_it() -> None:
    host = FakeHost()
    assert error("-c", "x", "-u", "y", "-r", RUNC, "-l", "/p/ctr.log", "--log-tag", "t",
                 host=host) == b"[conmon:e] k8s-file doesn't support --log-tag\n"
    assert host.opened == ["/p/ctr.log"]
    both = check("-c", "0123456789abc", "-u", "y", "-r", RUNC, "-l", "/p/ctr.log",
                 "-l", "journald", "--log-tag", "t")
    assert both.log_drivers.journald and both.k8s_log_fd is not None


def test_passthrough_refuses_a_tty() -> None:
    assert error(*VALID[:-1], "passthrough", host=FakeHost(ttys=(2,))) == (
        b"[conmon:e]: cannot use a tty with passthrough logging mode to prevent attacks via "
        b"TIOCSTI\n")


def test_create_defaults() -> None:
    config = check(*VALID)
    assert config.mode == Mode.CREATE and config.bundle == "/work"
    assert config.container_pidfile == "/work/pidfile-cid"
    assert config.log_level == LogLevel.WARN and config.k8s_log_fd is None


def test_exec_has_no_default_bundle() -> None:
    config = check("-c", "cid", "-r", RUNC, "-e", "--exec-process-spec", "/p.json", "-l", "none")
    assert config.mode == Mode.EXEC and config.bundle is None and config.legacy_exec
    assert config.container_pidfile == "/work/pidfile-cid"


def test_restore_and_levels() -> None:
    config = check(*VALID, "--restore", "/ck", "--log-level", "TRACE")
    assert config.mode == Mode.RESTORE and config.log_level == LogLevel.TRACE
    assert check(*VALID, "--log-level", "Panic").log_level == LogLevel.ERROR


def test_seccomp_plugins_default_from_environment() -> None:
    config = check(*VALID, environ={"CONMON_SECCOMP_NOTIFY_PLUGINS": "a:b"})
    assert config.seccomp_notify_plugins == "a:b"
    assert check(*VALID, "--seccomp-notify-plugins", "c").seccomp_notify_plugins == "c"
