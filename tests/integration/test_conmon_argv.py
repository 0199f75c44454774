"""pyshim-conmon and the real conmon 2.1.6 side by side on bad command lines and bad channel
variables (spec §2, §3.1): the same exit status, the same stdout and stderr bytes, and neither
reads the start channel before refusing (the parent's write then fails with EPIPE).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYSHIM_CONMON = str(REPO / "bin" / "pyshim-conmon")
CONMON = shutil.which("conmon")
RUNC = shutil.which("runc") or "/usr/sbin/runc"

pytestmark = pytest.mark.skipif(CONMON is None, reason="conmon is not installed "
                                 "(./scripts/setup installs it)")

IDS = ["-c", "cid", "-u", "cid"]
WITH_RUNTIME = [*IDS, "-r", RUNC]

#: Command lines both must refuse ({dir} is a per-test directory).
BAD_COMMAND_LINES: list[list[str]] = [
    [],
    ["--bogus"],
    ["-z"],
    ["-tz"],
    ["-t=1"],
    ["--help=x"],
    ["--log-label", "a=b"],
    ["-c"],
    ["-cfoo"],
    ["-c=foo"],
    ["--cid"],
    ["-cu", "x", "y"],
    ["--bogus", "--version"],
    ["--bogus", "-h"],
    ["-c", "x", "--version", "-c"],
    ["-c", "x", "--log-size-max", "10k"],
    ["-c", "x", "--log-size-max", "08"],
    ["-c", "x", "--log-size-max", ""],
    ["-c", "x", "--log-size-max", "0x"],
    ["-c", "x", "--log-size-max", "5 "],
    ["-c", "x", "--log-size-max", "99999999999999999999"],
    ["-c", "x", "--timeout", "2147483648"],
    ["-c", "x", "-T", "1x"],
    ["-c", "x", "--exit-delay", "1e3"],
    ["-c", "x", "--log-global-size-max=1k"],
    ["-c", "é"],
    ["-c", "x", "-T", "é"],
    ["--", "-c", "x"],
    ["-t", "-i"],
    ["-c", "x", "--log-level", "bad"],
    ["-c", "x", "--log-level", "Info "],
    ["-c", "x", "--log-level", "bad", "-e", "--restore", "r"],
    ["-c", "x", "-e", "--restore", "/r", "--exec-attach"],
    ["-c", "x", "--exec-attach"],
    ["-c", "x", "-e", "--exec-attach"],
    ["-c", "x"],
    ["-c", "x", "--log-level", "TRACE"],
    ["-c", "x", "--api-version", "1", "-e"],
    ["-c", "x", "-u", "y"],
    ["-c", "x", "-u", "y", "-r", "/nonexistent"],
    ["-c", "x", "-u", "y", "-r", ""],
    ["-c", "x", "-u", "y", "-r", "/etc/passwd"],
    ["-c", "x", "-r", RUNC, "-e"],
    ["-c", "x", "-r", RUNC, "-e", "--exec-process-spec", "/x", "--exit-delay", "-1"],
    [*WITH_RUNTIME, "--exit-delay", "-1", "-l", "bogus:x"],
    WITH_RUNTIME,
    [*WITH_RUNTIME, "-l", ""],
    [*WITH_RUNTIME, "-l", ":"],
    [*WITH_RUNTIME, "-l", "k8s-file"],
    [*WITH_RUNTIME, "-l", "k8s-file:"],
    [*WITH_RUNTIME, "-l", "foo:"],
    [*WITH_RUNTIME, "-l", "a:b:c"],
    [*WITH_RUNTIME, "-l", "none", "-l", ""],
    [*WITH_RUNTIME, "-l", "journald"],
    [*WITH_RUNTIME, "-l", "journald:", "-c", "0123456789ab"],
    [*WITH_RUNTIME, "-l", "journald:", "-c", "0123456789abc", "-l", "bad:x"],
    [*WITH_RUNTIME, "-l", "{dir}/missing/ctr.log"],
    [*WITH_RUNTIME, "-l", "k8s-file:{dir}/missing/x", "-l", "bogus:x"],
    [*WITH_RUNTIME, "-l", "{dir}/ctr.log", "--log-tag", "t"],
]

#: Good command lines with bad channel variables: refused before the fork.
BAD_CHANNELS: list[dict[str, str]] = [
    {"_OCI_STARTPIPE": "abc"},
    {"_OCI_STARTPIPE": "3 "},
    {"_OCI_STARTPIPE": "0x5"},
    {"_OCI_STARTPIPE": "99"},
    {"_OCI_STARTPIPE": "-1"},
    {"_OCI_STARTPIPE": "99999999999999999999"},
]


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: bytes
    stderr: bytes
    #: What writing the start byte afterwards gave: "EPIPE" = nobody ever read it.
    start_channel: str


@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def run(program: str, words: list[str], directory: Path, environ: dict[str, str],
        *, start_channel: bool = True) -> Outcome:
    words = [word.replace("{dir}", str(directory)) for word in words]
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # No warm monitor-server: one started here would outlive the test (conmon ignores it).
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYSHIM_CONMON_SERVER": "0",
                   **environ}
    pass_fds: tuple[int, ...] = ()
    if start_channel and "_OCI_STARTPIPE" not in environ:
        environment["_OCI_STARTPIPE"] = str(child_end.fileno())
        pass_fds = (child_end.fileno(),)
    try:
        result = subprocess.run([program, *words], cwd=directory, env=environment,
                                pass_fds=pass_fds, stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=30)
        child_end.close()
        try:
            parent_end.send(b"\0")
            channel = "written"
        except BrokenPipeError:
            channel = "EPIPE"
    finally:
        child_end.close()
        parent_end.close()
    return Outcome(result.returncode, result.stdout, result.stderr, channel)


def both(words: list[str], directory: Path, environ: dict[str, str]) -> tuple[Outcome, Outcome]:
    assert CONMON is not None
    theirs_dir, ours_dir = directory / "conmon", directory / "pyshim"
    theirs_dir.mkdir()
    ours_dir.mkdir()
    theirs = run(CONMON, words, theirs_dir, environ)
    ours = run(PYSHIM_CONMON, words, ours_dir, environ)
    # Paths of the per-program directories differ only by that name.
    return theirs, Outcome(ours.status, ours.stdout.replace(b"/pyshim", b"/conmon"),
                           ours.stderr.replace(b"/pyshim", b"/conmon"), ours.start_channel)


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
@pytest.mark.parametrize("words", BAD_COMMAND_LINES, ids=[" ".join(w) or "(none)"
                                                           for w in BAD_COMMAND_LINES])
def test_bad_command_lines_are_refused_alike(words: list[str], locale: str,
                                             work_dir: Path) -> None:
    theirs, ours = both(words, work_dir, {"LANG": locale})
    assert theirs.status == 1, theirs  # the table holds only command lines conmon refuses
    assert ours == theirs
    assert ours.start_channel == "EPIPE"


@pytest.mark.parametrize("environ", BAD_CHANNELS, ids=[str(e) for e in BAD_CHANNELS])
def test_bad_channel_variables_are_refused_alike(environ: dict[str, str],
                                                 work_dir: Path) -> None:
    words = [*WITH_RUNTIME, "-l", "none", "--full-attach", "-b", str(work_dir)]
    theirs, ours = both(words, work_dir, environ)
    assert theirs.status == 1 and theirs.stderr.startswith(b"[conmon:e]: unable to ")
    assert ours == theirs


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
@pytest.mark.parametrize("words", [["--help"], ["-h"], ["-c", "x", "-?"], ["--help-all"],
                                   ["-th", "--bogus"]])
def test_help_is_conmons(words: list[str], locale: str, work_dir: Path) -> None:
    theirs, ours = both(words, work_dir, {"LANG": locale})
    assert theirs.status == 0 and theirs.stdout.startswith(b"Usage:\n")
    assert ours == theirs


@pytest.mark.parametrize("words", [["--version"], ["--version=1"], ["-c", "x", "--version"],
                                   ["--version", "--log-level", "bogus"]])
def test_version_is_answered_after_a_clean_parse(words: list[str], work_dir: Path) -> None:
    theirs, ours = both(words, work_dir, {})
    assert (ours.status, ours.stderr) == (theirs.status, theirs.stderr) == (0, b"")
    assert ours.stdout.split(b"\n")[0] == theirs.stdout.split(b"\n")[0] == (
        b"conmon version 2.1.6")
