"""What the real conmon 2.1.6 gives a runtime and sends its parent, against pyshim's pure
builders: the runtime's argv (runtime_argv.py) and the failure message made of the runtime's
stderr (channels.py). A stand-in runtime logs its argv, writes chosen bytes on stderr and fails.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pyshim.conmon.args import parse
from pyshim.conmon.channels import failure_message, result_key
from pyshim.conmon.options import ConmonOptions
from pyshim.conmon.runtime_argv import ListenPidError, runtime_command, runtime_listen_pid
from pyshim.conmon.validate import RealHost, validate

CONMON = shutil.which("conmon")
pytestmark = pytest.mark.skipif(CONMON is None, reason="conmon is not installed")


def stand_in_runtime(directory: Path, stderr: bytes) -> Path:
    (directory / "stderr").write_bytes(stderr)
    runtime = directory / "runtime"
    runtime.write_text(f"#!/bin/sh\nfor word in \"$@\"; do printf '%s\\n' \"$word\"; done"
                       f" > {directory}/argv\ncat {directory}/stderr >&2\nexit 1\n")
    runtime.chmod(0o755)
    return runtime


def run_conmon(words: list[str], directory: Path) -> list[bytes]:
    """conmon in the foreground (--sync) with a SEQPACKET sync channel: its messages."""
    assert CONMON is not None
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        subprocess.run([CONMON, *words, "--sync"], cwd=directory, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "TMPDIR": str(directory),
                            "_OCI_SYNCPIPE": str(child_end.fileno())},
                       pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL,
                       capture_output=True)
        child_end.close()
        parent_end.settimeout(30)
        messages = []
        while message := parent_end.recv(65536):
            messages.append(message)
        return messages
    finally:
        child_end.close()
        parent_end.close()


def ours(words: list[str], directory: Path, console: str | None) -> list[str]:
    values = parse([word.encode() for word in words], lambda: "UTF-8")
    config = validate(ConmonOptions.from_values(values), _Host(directory), {})
    return list(runtime_command(config, console).argv)


class _Host(RealHost):
    def __init__(self, cwd: Path) -> None:
        self._cwd = str(cwd)

    def getcwd(self) -> str | None:
        return self._cwd


CASES = [
    [],
    ["-s", "--no-pivot", "--no-new-keyring", "--runtime-arg", "--root=/r",
     "--runtime-arg=--debug", "--restore-arg", "A", "--runtime-opt", "B", "--restore-arg", "C"],
    ["--runtime-arg", "--log-format=json", "--runtime-arg", "--log", "--runtime-arg=/r/oci-log",
     "--runtime-opt", "--preserve-fds", "--runtime-opt", "0"],
    ["--restore", "/checkpoint", "--runtime-opt", "--tcp-established", "-s", "--no-pivot"],
    ["-t"],
    ["-e", "--exec-process-spec", "/p.json", "-t", "--runtime-arg", "--root=/r", "-s"],
    ["-e", "--exec-process-spec", "/p.json", "--runtime-opt", "--preserve-fds=0"],
]


@pytest.mark.parametrize("extra", CASES, ids=[" ".join(case) or "create" for case in CASES])
def test_runtime_argv_is_conmons(extra: list[str], tmp_path: Path) -> None:
    runtime = stand_in_runtime(tmp_path, b"oops\n")
    words = ["--api-version", "-c", "cid", "-u", "cid", "-r", str(runtime), "-b", str(tmp_path),
             "-l", "none", "--full-attach", *extra]
    run_conmon(words, tmp_path)
    theirs = (tmp_path / "argv").read_text().splitlines()
    console = None
    if "--console-socket" in theirs:  # a random name under TMPDIR
        console = theirs[theirs.index("--console-socket") + 1]
        assert console.startswith(f"{tmp_path}/conmon-term.")
    assert ours(words, tmp_path, console) == [str(runtime), *theirs]


def test_legacy_exec_argv_defaults_the_pidfile_to_the_cwd(tmp_path: Path) -> None:
    runtime = stand_in_runtime(tmp_path, b"oops\n")
    words = ["-c", "cid", "-r", str(runtime), "-l", "none", "-e",
             "--exec-process-spec", "/p.json"]
    run_conmon(words, tmp_path)
    theirs = (tmp_path / "argv").read_text().splitlines()
    assert ours(words, tmp_path, None) == [str(runtime), *theirs]


STDERRS = [
    b"oops\n",
    bytes(range(1, 0x1F)) + bytes(range(0x20, 0x80)) + b"\x80\xff\xc3\xa9 end",  # not 0x1f
    b'time="2026-11-22T18:50:51Z" level=error msg="runc create failed: exec: \\"/x\\""\n',
    b"ab\0cd",
    b"\0",
    b"x" * 3000,
]


@pytest.mark.parametrize("api", [True, False])
@pytest.mark.parametrize("stderr", STDERRS, ids=range(len(STDERRS)))
@pytest.mark.parametrize("exec_mode", [False, True])
def test_failure_message_is_conmons(stderr: bytes, api: bool, exec_mode: bool,
                                    tmp_path: Path) -> None:
    runtime = stand_in_runtime(tmp_path, stderr)
    words = ["-c", "cid", "-u", "cid", "-r", str(runtime), "-b", str(tmp_path), "-l", "none",
             "--full-attach"]
    if api:
        words.append("--api-version")
    if exec_mode:
        words += ["-e", "--exec-process-spec", "/p.json"]
    (theirs,) = run_conmon(words, tmp_path)
    assert failure_message(result_key(api_version=api, exec_mode=exec_mode), stderr) == theirs


def test_no_stderr_no_message(tmp_path: Path) -> None:
    runtime = stand_in_runtime(tmp_path, b"")
    words = ["--api-version", "-c", "cid", "-u", "cid", "-r", str(runtime), "-b", str(tmp_path),
             "-l", "none", "--full-attach"]
    assert run_conmon(words, tmp_path) == []
    assert failure_message("data", b"") is None


def listen_pid_runtime(directory: Path) -> Path:
    """Records `<LISTEN_PID> <its own pid>` and fails quietly."""
    runtime = directory / "runtime"
    runtime.write_text(f"#!/bin/sh\necho \"${{LISTEN_PID-unset}} $$\" > {directory}/seen\n"
                       "exit 1\n")
    runtime.chmod(0o755)
    return runtime


@pytest.mark.parametrize(("value", "replace"), [
    ("self", False), ("self", True), ("77", False), ("77", True), ("12abc", True),
    ("abc", False), ("0", False), ("", True), ("99999999999999999999999", False),
])
def test_listen_pid_is_conmons(value: str, replace: bool, tmp_path: Path) -> None:
    """conmon --sync is the monitor; `self` is its own PID (it is exec'd from a shell that
    wrote its $$ first). What its runtime child saw, or its failure message, against
    runtime_listen_pid's answer."""
    assert CONMON is not None
    runtime = listen_pid_runtime(tmp_path)
    words = ["--api-version", "-c", "cid", "-u", "cid", "-r", str(runtime), "-b", str(tmp_path),
             "-l", "none", "--full-attach", "--sync"]
    if replace:
        words.append("--replace-listen-pid")
    setting = "LISTEN_PID=$$" if value == "self" else f"LISTEN_PID='{value}'"
    script = f'echo $$ > {tmp_path}/monitor; {setting} exec "$0" "$@"'
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.run(
            ["sh", "-c", script, CONMON, *words], cwd=tmp_path, timeout=30,
            env={"PATH": "/usr/bin:/bin", "_OCI_SYNCPIPE": str(child_end.fileno())},
            pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL, capture_output=True)
        child_end.close()
        parent_end.settimeout(30)
        messages = []
        while message := parent_end.recv(65536):
            messages.append(message)
    finally:
        child_end.close()
        parent_end.close()
    monitor_pid = int((tmp_path / "monitor").read_text())
    environ = {"LISTEN_PID": str(monitor_pid) if value == "self" else value}
    seen = tmp_path / "seen"
    if not seen.exists():  # the child refused to exec the runtime
        with pytest.raises(ListenPidError) as caught:
            runtime_listen_pid(environ, monitor_pid=monitor_pid, runtime_pid=1, replace=replace)
        assert messages == [failure_message("data", caught.value.line)]
        return
    listen_pid, runtime_pid = seen.read_text().split()
    expected = runtime_listen_pid(environ, monitor_pid=monitor_pid,
                                  runtime_pid=int(runtime_pid), replace=replace)
    assert listen_pid == (environ["LISTEN_PID"] if expected is None else expected)
    assert messages == [] and process.returncode == 1
