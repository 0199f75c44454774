"""`pyshim-conmon` as a whole beside the real conmon 2.1.6, in the modes podman's e2e tests do not
reach: `--sync` (CRI-O's), `--timeout`, legacy exec with `-T` (CRI-O's ExecSync) and a failing
runtime. A stand-in runtime starts the payload as runc would (the container process is the
monitor's grandchild, re-parented to it); the test is the parent holding the sync channel.
Compared: the sync messages (PIDs only as positive), the runtime's command lines, the exit
files and the logged output per stream; the monitor's exit status against the expected one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyshim.conmon.channels import SyncMessage, decode
from tests.integration.conmon_helpers import records

CONMON = shutil.which("conmon")
PYSHIM_CONMON = str(Path(__file__).resolve().parents[2] / "bin" / "pyshim-conmon")
#: What the README tells CRI-O users to configure (deploy/crio/10-pyshim.conf): its
#: monitor_env is the environment both monitors run with here.
CRIO_HANDLER = tomllib.loads(
    (Path(__file__).resolve().parents[2] / "deploy" / "crio" / "10-pyshim.conf").read_text()
)["crio"]["runtime"]["runtimes"]["runc"]
MONITOR_ENV = dict(item.split("=", 1) for item in CRIO_HANDLER["monitor_env"])
CID = "c0ffee00c0ffee00c0ffee00"
CREATE = ["--api-version", "1", "-u", CID, "-b", "ROOT/bundle", "--full-attach"]
# create/exec: start the payload detached and write its pid, as runc does; delete/kill: accept.
RUNTIME = """#!/bin/sh
echo "$*" >> "${0%/*}/calls"
[ -n "$RUNTIME_FAIL" ] && { echo "runtime says no" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in --pid-file) pidfile=$2; shift;; create|exec) command=$1;; esac; shift
done
case $command in create|exec) ;; *) exit 0;; esac
# Started by a process that never waits (posix_spawn, then exit): a shell, even a subshell
# that exits at once, may reap a payload that exits fast, and the monitor would wait for it
# forever. The payload is only the monitor's child, as runc leaves a container's process.
PIDFILE=$pidfile /usr/bin/python3 -I -S -c 'import os
pid = os.posix_spawn("/bin/sh", ["sh", "-c", os.environ["PAYLOAD"]], os.environ, setsid=True,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)])
open(os.environ["PIDFILE"], "w").write(str(pid))'
"""

def test_the_crio_handler_names_the_installed_monitor_and_runc() -> None:
    """The deploy file points CRI-O at the command scripts/setup links (its default link
    directory) and at Debian's runc."""
    assert CRIO_HANDLER["monitor_path"] == "/usr/local/bin/pyshim-conmon"
    assert CRIO_HANDLER["runtime_type"] == "oci"
    assert os.path.realpath(CRIO_HANDLER["runtime_path"]) == os.path.realpath(
        shutil.which("runc") or "")
    assert "PYSHIM_LINK_DIR-/usr/local/bin" in (
        Path(__file__).resolve().parents[2] / "scripts" / "setup").read_text()


pytestmark = pytest.mark.skipif(CONMON is None, reason="needs conmon (scripts/setup installs it)")


@dataclass
class Outcome:
    status: int
    messages: list[SyncMessage]
    files: dict[str, str]
    log: dict[str, bytes]
    #: What reached the monitor's own stdout (passthrough logging).
    stdout: bytes = b""
    #: The runtime's command lines (the test's directory replaced by ROOT).
    calls: tuple[str, ...] = ()

    def comparable(self) -> tuple[list[tuple[str, int | str, str | None]], dict[str, str],
                                  dict[str, bytes], bytes, tuple[str, ...]]:
        """Everything but the monitor's own exit status: conmon 2.1.6 with --sync exits 255
        now and then although its exit file and messages say otherwise (a race of its
        SIGCHLD handling); ours is checked against the expected value instead."""
        messages = [(m.key, "pid" if m.value > 0 and m.text is None and i == 0 else m.value,
                     m.text) for i, m in enumerate(self.messages)]
        return messages, self.files, self.log, self.stdout, self.calls


def run_monitor(program: str, root: Path, words: list[str], payload: str,
                fail: bool = False) -> Outcome:
    root.mkdir()
    (root / "bundle").mkdir()
    (root / "exits").mkdir()
    (root / "bundle" / "config.json").write_text(
        json.dumps({"linux": {"namespaces": [{"type": "pid"}]}}))
    runtime = root / "runtime"
    runtime.write_text(RUNTIME)
    runtime.chmod(0o755)
    (root / "process.json").write_text(json.dumps({"args": ["/bin/sh"], "terminal": False}))
    logging = [] if "-l" in words else ["-l", f"k8s-file:{root / 'ctr.log'}"]
    argv = [program, "-c", CID, "-r", str(runtime), "-p", str(root / "pidfile"), *logging,
            "--exit-dir", str(root / "exits"), "--sync",
            *[word.replace("ROOT", str(root)) for word in words]]
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    process: subprocess.Popen[bytes] | None = None
    env = {**MONITOR_ENV, "PAYLOAD": payload,
           "_OCI_SYNCPIPE": str(child.fileno()), **({"RUNTIME_FAIL": "1"} if fail else {})}
    try:
        process = subprocess.Popen(argv, cwd=root, env=env, pass_fds=[child.fileno()],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, process_group=0)
        child.close()
        parent.settimeout(60)
        data = b""
        while chunk := parent.recv(65536):
            data += chunk
        status = process.wait(60)
        assert process.stdout is not None
        stdout = process.stdout.read()
        process.stdout.close()
    finally:
        parent.close()
        child.close()
        if process is not None and process.poll() is None:
            # Failed before the monitor ended: it and what it started go (by process group).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    files = {path.name: path.read_text() for path in (root / "exits").iterdir()}
    log: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    if (root / "ctr.log").exists():
        for _, stream, tag, content in records(root / "ctr.log"):
            log[stream] += content + (b"\n" if tag == "F" else b"")
    called = (root / "calls").read_text() if (root / "calls").exists() else ""
    calls = tuple(line.replace(str(root), "ROOT") for line in called.splitlines())
    return Outcome(status, decode(data), files, log, stdout, calls)


def both(tmp: Path, words: list[str], payload: str, fail: bool = False,
         extra_calls: tuple[str, ...] = ()) -> Outcome:
    """Run both; `extra_calls`: runtime calls only pyshim makes, after conmon's."""
    assert CONMON is not None
    theirs = run_monitor(CONMON, tmp / "conmon", words, payload, fail)
    ours = run_monitor(PYSHIM_CONMON, tmp / "pyshim", words, payload, fail)
    theirs.calls += extra_calls
    assert ours.comparable() == theirs.comparable()
    return ours


def test_create_with_sync_reports_the_pid_and_the_exit(short_tmp: Path) -> None:
    outcome = both(short_tmp, CREATE,
                   "echo out; echo err >&2; exit 3")
    assert outcome.status == 3 and outcome.files == {CID: "3"}
    assert outcome.log == {"stdout": b"out\n", "stderr": b"err\n"}
    assert [m.key for m in outcome.messages] == ["data"] and outcome.messages[0].value > 0


def test_create_timeout_kills_and_reports_minus_one(short_tmp: Path) -> None:
    outcome = both(short_tmp, [*CREATE, "--timeout=1"], "sleep 30")
    assert outcome.status == 255 and outcome.files == {CID: "-1"}


def test_legacy_exec_reports_the_exit_code(short_tmp: Path) -> None:
    outcome = both(short_tmp, ["-e", "--exec-process-spec", "ROOT/process.json"],
                   "echo sync-out; printf no-nl; echo sync-err >&2; exit 2")
    assert outcome.messages == [SyncMessage("exit_code", 2)]
    assert outcome.status == 2
    assert outcome.log == {"stdout": b"sync-out\nno-nl", "stderr": b"sync-err\n"}


def test_legacy_exec_timeout(short_tmp: Path) -> None:
    outcome = both(short_tmp, ["-e", "--exec-process-spec", "ROOT/process.json", "-T", "1"],
                   "sleep 30")
    assert outcome.messages == [SyncMessage("exit_code", -1, "command timed out")]
    assert outcome.status == 255


def test_a_failing_runtime_sends_its_stderr(short_tmp: Path) -> None:
    # The engine removes whatever a failed create left (conmon leaves it to its parent).
    outcome = both(short_tmp, CREATE, "exit 0", fail=True,
                   extra_calls=(f"delete --force {CID}",))
    assert outcome.messages == [SyncMessage("data", -1, "runtime says no\n")]
    assert outcome.status == 1 and outcome.files == {}


def test_an_attach_socket_that_cannot_be_made_fails_without_a_message(short_tmp: Path) -> None:
    # Without --full-attach the socket goes through a symlink in --socket-dir-path.
    outcome = both(short_tmp, ["--api-version", "1", "-u", CID, "-b", "ROOT/bundle",
                               "--socket-dir-path", "ROOT/missing"], "exit 0")
    assert outcome.messages == [] and outcome.status == 1 and outcome.files == {}


def test_passthrough_logging_gives_the_container_our_stdio(short_tmp: Path) -> None:
    outcome = both(short_tmp, [*CREATE, "-l", "passthrough"], "echo through; exit 4")
    assert outcome.stdout == b"through\n" and outcome.files == {CID: "4"}
    assert outcome.status == 4
