"""The launch sequence (spec §4.1, §4.2) as a parent sees it: the start byte is read, the
process the parent started exits 0 once `--conmon-pidfile` holds the daemon's PID, and the
daemon reports on the sync channel; the same with the real conmon 2.1.6. Every launch runs under
tests/e2e/subreaper.py, which reaps the daemon and exits once nothing of it is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyshim.conmon.channels import decode

REPO = Path(__file__).resolve().parents[2]
SUBREAPER = [sys.executable, str(REPO / "tests" / "e2e" / "subreaper.py"),
             "--parent", str(os.getpid()), "--"]
PROBE = [sys.executable, str(Path(__file__).with_name("conmon_probe.py"))]
PYSHIM_CONMON = [str(REPO / "bin" / "pyshim-conmon")]
CONMON = shutil.which("conmon")


@dataclass
class Launch:
    status: int
    messages: list[bytes]
    conmon_pidfile: bytes | None
    stderr: bytes
    #: What /proc shows for the extra fd the parent passed (`socket:[inode]`), if any.
    extra_fd: tuple[int, str] | None = None


def failing_runtime(directory: Path) -> str:
    """A runtime that says `oops` on stderr and fails: conmon then sends that on sync."""
    path = directory / "runtime"
    path.write_text("#!/bin/sh\necho oops >&2\nexit 1\n")
    path.chmod(0o755)
    return str(path)


def launch(command: list[str], words: list[str], directory: Path, *,
           extra_fd: bool = False, attach: bool = False,
           environ: dict[str, str] | None = None) -> Launch:
    """Start `command words` as podman does (SEQPACKET channels, own process group), write the
    start byte, wait for the started process, read the sync channel to EOF."""
    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    start_parent, start_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    attach_parent, attach_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # like podman's held ports
    # No warm server unless a test asks for one: a server started here would stay below
    # SUBREAPER, which holds the sync channel until every descendant is gone.
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYSHIM_CONMON_SERVER": "0",
                   **(environ or {}),
                   "_OCI_SYNCPIPE": str(sync_child.fileno()),
                   "_OCI_STARTPIPE": str(start_child.fileno())}
    fds = [sync_child.fileno(), start_child.fileno()]
    if attach:
        environment["_OCI_ATTACHPIPE"] = str(attach_child.fileno())
        fds.append(attach_child.fileno())
    if extra_fd:
        fds.append(reserved.fileno())
    pidfile = directory / "conmon.pid"
    extra = (reserved.fileno(), f"socket:[{os.fstat(reserved.fileno()).st_ino}]")
    try:
        process = subprocess.Popen(
            [*SUBREAPER, *command, *words, "-P", str(pidfile)], cwd=directory, env=environment,
            pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, process_group=0)
        for child_end in (sync_child, start_child, attach_child):
            child_end.close()
        start_parent.send(b"\0")
        sync_parent.settimeout(30)
        messages = []
        while message := sync_parent.recv(65536):
            messages.append(message)
        _, stderr = process.communicate(timeout=30)
    finally:
        for end in (sync_parent, start_parent, attach_parent, reserved):
            end.close()
    content = pidfile.read_bytes() if pidfile.exists() else None
    return Launch(process.returncode, messages, content, stderr, extra if extra_fd else None)


def probe_words(directory: Path, *extra: str) -> list[str]:
    return ["--api-version", "1", "-c", "cid", "-u", "cid", "-r", failing_runtime(directory),
            "-b", str(directory), "-l", "none", "--full-attach", *extra]


def test_daemon_is_a_session_leader_with_null_stdio(tmp_path: Path) -> None:
    result = launch(PROBE, probe_words(tmp_path), tmp_path, extra_fd=True)
    assert result.status == 0, result.stderr
    (report,) = [json.loads(message) for message in result.messages]
    assert result.conmon_pidfile == str(report["pid"]).encode()  # no newline
    assert report["sid"] == report["pid"]
    assert report["stdio"] == ["/dev/null"] * 3
    assert report["subreaper"] == 1  # (oom_score_adj -1000 needs CAP_SYS_RESOURCE: best effort)
    assert report["sync_cloexec"] and report["start"] is None and report["attach"] is None
    assert len(report["inherited"]) == 1  # the reserved port, not the channels
    assert set(report["inherited"]) <= set(report["open"])


def test_conmon_pidfile_is_written_atomically(tmp_path: Path) -> None:
    launch(PROBE, probe_words(tmp_path), tmp_path)
    mode = stat.S_IMODE((tmp_path / "conmon.pid").stat().st_mode)
    assert mode == 0o666 & ~current_umask()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["conmon.pid", "runtime"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sync_mode_keeps_the_started_process(tmp_path: Path) -> None:
    result = launch(PROBE, probe_words(tmp_path, "--sync"), tmp_path)
    assert result.status == 0
    (report,) = [json.loads(message) for message in result.messages]
    assert result.conmon_pidfile is None  # conmon does not write -P with --sync
    assert report["stdio"] == ["/dev/null"] * 3


def test_exec_attach_keeps_the_start_channel(tmp_path: Path) -> None:
    words = probe_words(tmp_path, "-e", "--exec-attach", "--exec-process-spec", "/p.json")
    result = launch(PROBE, words, tmp_path, attach=True)
    (report,) = [json.loads(message) for message in result.messages]
    assert report["start"] is not None and report["attach"] is not None


def test_exec_attach_without_attach_channel_fails(tmp_path: Path) -> None:
    words = probe_words(tmp_path, "-e", "--exec-attach", "--exec-process-spec", "/p.json",
                        "--sync")
    result = launch(PROBE, words, tmp_path)
    assert result.status == 1 and result.messages == []
    assert result.stderr.startswith(
        b"[conmon:e]: --attach specified but _OCI_ATTACHPIPE was not")


@pytest.mark.skipif(CONMON is None, reason="conmon is not installed")
@pytest.mark.parametrize("api", [["--api-version"], []])
def test_like_conmon_a_failed_create_is_one_negative_message(api: list[str],
                                                             tmp_path: Path) -> None:
    """Until the monitor exists pyshim-conmon fails every create; the parent sees what conmon's
    failed create looks like: exit 0, the daemon's PID in -P, one `-1` message, EOF."""
    assert CONMON is not None
    outcomes = []
    for name, command in (("conmon", [CONMON]), ("pyshim", PYSHIM_CONMON)):
        directory = tmp_path / name
        directory.mkdir()
        words = ["-c", "cid", "-u", "cid", "-r", failing_runtime(directory), "-b",
                 str(directory), "-l", "none", "--full-attach", *api]
        result = launch(command, words, directory)
        assert result.status == 0 and result.stderr == b""
        assert result.conmon_pidfile is not None and result.conmon_pidfile.isdigit()
        (message,) = decode(b"".join(result.messages))
        outcomes.append((message.key, message.value))
    key = "data" if api else "pid"
    assert outcomes[0] == outcomes[1] == (key, -1)


@pytest.mark.skipif(CONMON is None, reason="conmon is not installed")
def test_unwritable_conmon_pidfile_fails_like_conmon(tmp_path: Path) -> None:
    assert CONMON is not None
    outcomes = []
    for name, command in (("conmon", [CONMON]), ("pyshim", PYSHIM_CONMON)):
        directory = tmp_path / name
        directory.mkdir()
        words = ["-c", "cid", "-u", "cid", "-r", failing_runtime(directory), "-b",
                 str(directory), "-l", "none", "--full-attach", "--api-version",
                 "-P", "/nonexistent/conmon.pid"]
        process = subprocess.run([*SUBREAPER, *command, *words], cwd=directory, timeout=30,
                                 stdin=subprocess.DEVNULL, capture_output=True,
                                 env={"PATH": "/usr/bin:/bin", "PYSHIM_CONMON_SERVER": "0"})
        # GLib's temporary name ends in six random letters and digits.
        stderr = re.sub(rb"conmon\.pid\.[A-Za-z0-9]{6}", b"conmon.pid.XXXXXX", process.stderr)
        outcomes.append((process.returncode, stderr))
    assert outcomes[0] == outcomes[1] == (1, (
        "[conmon:e]: Failed to write conmon pidfile: Failed to create file "
        "\u201c/nonexistent/conmon.pid.XXXXXX\u201d: No such file or directory No such file or "
        "directory\n").encode())
