"""The runtime's command line (spec §5.1), compared with what conmon 2.1.6 passed to a runtime
that logged its argv."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pyshim.conmon.args import parse
from pyshim.conmon.options import ConmonOptions
from pyshim.conmon.runtime_argv import ListenPidError, runtime_command, runtime_listen_pid
from pyshim.conmon.validate import ConmonConfig, validate

RT = "/rt"
BASE = ["-c", "cid1", "-u", "cid1", "-r", RT, "-b", "/b", "-p", "/b/pidfile", "-l", "none"]


@dataclass
class Host:
    def access_executable(self, path: str) -> int:
        return 0

    def getcwd(self) -> str | None:
        return "/cwd"

    def isatty(self, fd: int) -> bool:
        return False

    def open_k8s_log(self, path: str) -> int:
        return 99


def config(*words: str) -> ConmonConfig:
    values = parse([word.encode() for word in words], lambda: "UTF-8")
    return validate(ConmonOptions.from_values(values), Host(), {})


def argv(*words: str, console: str | None = None) -> str:
    return " ".join(runtime_command(config(*words), console).argv)


def test_create_with_everything() -> None:
    assert argv(*BASE, "-s", "--no-pivot", "--no-new-keyring", "--runtime-arg", "--root=/r",
                "--runtime-arg=--debug", "--restore-arg", "A", "--runtime-opt", "B",
                "--restore-arg", "C", "-t", console="/tmp/conmon-term.X") == (
        "/rt --systemd-cgroup --root=/r --debug create --bundle /b --pid-file /b/pidfile "
        "--no-pivot --no-new-keyring A B C --console-socket /tmp/conmon-term.X cid1")


def test_podman_create() -> None:
    assert argv(*BASE, "--api-version", "--runtime-arg", "--log-format=json", "--runtime-arg",
                "--log", "--runtime-arg=/r/oci-log", "--runtime-opt", "--preserve-fds",
                "--runtime-opt", "2") == (
        "/rt --log-format=json --log /r/oci-log create --bundle /b --pid-file /b/pidfile "
        "--preserve-fds 2 cid1")


def test_restore() -> None:
    command = runtime_command(config(*BASE, "--restore", "/ck", "--runtime-opt",
                                     "--tcp-established", "-s"))
    assert " ".join(command.argv) == (
        "/rt --systemd-cgroup restore --bundle /b --pid-file /b/pidfile --detach --image-path"
        " /ck --work-path /b --tcp-established cid1")
    assert command.subcommand == "restore" and command.path == RT
    assert argv(*BASE, "--restore", "/ck", "--no-pivot", "--no-new-keyring") == (
        "/rt restore --bundle /b --pid-file /b/pidfile --no-pivot --no-new-keyring --detach "
        "--image-path /ck --work-path /b cid1")


def test_exec_api1_with_tty() -> None:
    # -s and --no-pivot do not apply to exec; 2.1.6 adds --tty for -t.
    assert argv(*BASE, "-e", "--exec-process-spec", "/x.json", "-t", "--api-version",
                "--runtime-arg", "--root=/r", "--runtime-opt", "--preserve-fds=0", "-s",
                "--no-pivot", console="/tmp/conmon-term.C") == (
        "/rt --root=/r exec --pid-file /b/pidfile --process /x.json --detach --tty "
        "--preserve-fds=0 --console-socket /tmp/conmon-term.C cid1")


def test_legacy_exec_defaults_the_pidfile_to_the_cwd() -> None:
    assert argv("-c", "cid1", "-r", RT, "-l", "none", "-e", "--exec-process-spec",
                "/x.json") == (
        "/rt exec --pid-file /cwd/pidfile-cid1 --process /x.json --detach cid1")


@pytest.mark.parametrize(("value", "replace", "result"), [
    (None, True, None),  # no socket activation: nothing to do
    ("77", False, None),  # someone else's: left alone
    ("77", True, "500"),  # --replace-listen-pid
    ("42", False, "500"),  # names the monitor
    (" +42", False, "500"),
    ("42abc", False, "500"),  # strtol stops at the first non-digit
    ("4294967338", False, "500"),  # cut to a C int: 42
])
def test_listen_pid(value: str | None, replace: bool, result: str | None) -> None:
    environ = {} if value is None else {"LISTEN_PID": value}
    assert runtime_listen_pid(environ, monitor_pid=42, runtime_pid=500,
                              replace=replace) == result


@pytest.mark.parametrize(("value", "line"), [
    ("", b"[conmon:e]: Invalid LISTEN_PID  Success\n"),
    ("abc", b"[conmon:e]: Invalid LISTEN_PID abc Success\n"),
    ("0", b"[conmon:e]: Invalid LISTEN_PID 0 Success\n"),
    ("-5", b"[conmon:e]: Invalid LISTEN_PID -5 Success\n"),
    ("99999999999999999999999", b"[conmon:e]: Invalid LISTEN_PID 9999999999 Numerical result "
                                b"out of range\n"),
])
def test_invalid_listen_pid(value: str, line: bytes) -> None:
    with pytest.raises(ListenPidError) as caught:
        runtime_listen_pid({"LISTEN_PID": value}, monitor_pid=42, runtime_pid=500,
                           replace=False)
    assert caught.value.line == line
