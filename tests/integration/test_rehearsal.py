"""The fork-server's rehearsal (pyshim/shim/rehearsal.py) runs a whole daemon life in the
fork-server's own process: it must complete against its stand-in runtime, and, completed or
not, leave that process exactly as it found it (it forks every daemon after)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyshim.shim import rehearsal

ROOT = Path(__file__).resolve().parents[2]

#: Runs in a fresh interpreter (the rehearsal changes process-wide state while it runs):
#: imports what the fork-server imports, takes a snapshot, rehearses, takes another.
PROBE = r"""
import ctypes, json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from pyshim.shim import forkserver
for module in forkserver.PRELOAD:
    __import__(module)
from pyshim.shim import rehearsal

libc = ctypes.CDLL(None, use_errno=True)

def snapshot():
    flag = ctypes.c_int(-1)
    libc.prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    children = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        children.append(int(pid))
            except OSError:
                pass
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return {
        "fds": fds,
        "signals": {signal.Signals(s).name: str(signal.getsignal(s)) for s in rehearsal._SIGNALS},
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "subreaper": flag.value,
        "environ": dict(os.environ),
        "children": children,
        "threads": sorted(os.listdir("/proc/self/task")),
    }

parent, script = sys.argv[1], sys.argv[2]
os.environ["REHEARSING_PID"] = str(os.getpid())  # for stand-in runtimes that signal us
before = snapshot()
kwargs = {"runtime_script": open(script).read()} if script != "-" else {}
completed = rehearsal.rehearse(parent, **kwargs)
after = snapshot()
print(json.dumps({"completed": completed, "before": before, "after": after,
                  "left": os.listdir(parent)}))
"""


def run_probe(tmp_path: Path, runtime_script: str | None = None,
              status: int = 0) -> tuple[dict[str, Any], str]:
    script = "-"
    if runtime_script is not None:
        script = str(tmp_path / "runtime.sh")
        Path(script).write_text(runtime_script)
    parent = tmp_path / "forkserver"
    parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(parent), script], capture_output=True, text=True,
        timeout=60, cwd=ROOT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                   "PYTHONPATH": str(ROOT)})
    assert result.returncode == status, result.stderr
    return (json.loads(result.stdout) if status == 0 else {"left": os.listdir(parent)},
            result.stderr)


def assert_left_as_found(report: dict[str, Any]) -> None:
    assert report["after"] == report["before"]
    assert report["before"]["subreaper"] == 0
    assert report["after"]["children"] == []
    assert report["left"] == []


def test_rehearsal_completes_and_leaves_the_process_as_it_found_it(tmp_path: Path) -> None:
    report, stderr = run_probe(tmp_path)
    assert report["completed"] is True, stderr
    assert "rehearsal failed" not in stderr
    assert_left_as_found(report)


@pytest.mark.parametrize("failing", ["create", "kill"])
def test_a_failing_rehearsal_is_logged_and_leaves_nothing_behind(
        tmp_path: Path, failing: str) -> None:
    # The stand-in fails one command the way runc does; everything it started is stopped.
    script = rehearsal.STAND_IN_RUNTIME.replace(
        'case "$command" in',
        f'[ "$command" = {failing} ] && {{ echo "{failing} refused" >&2; exit 1; }}\n'
        'case "$command" in', 1)
    report, stderr = run_probe(tmp_path, script)
    assert report["completed"] is False
    assert "rehearsal failed (daemons will cost more memory)" in stderr
    assert_left_as_found(report)


def test_rehearsal_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rehearsal.REHEARSAL_VARIABLE, "0")
    assert not rehearsal.enabled()
    monkeypatch.delenv(rehearsal.REHEARSAL_VARIABLE)
    assert rehearsal.enabled()


def test_a_stop_asked_for_during_the_rehearsal_stops_the_process(tmp_path: Path) -> None:
    # SIGTERM while the rehearsing daemon's own handlers are installed (the stand-in runtime
    # sends it at create): it is held, then acted on as before, not taken for the daemon's.
    script = rehearsal.STAND_IN_RUNTIME.replace(
        'case "$command" in',
        '[ "$command" = create ] && kill -TERM "$REHEARSING_PID"\ncase "$command" in', 1)
    report, _ = run_probe(tmp_path, script, status=-signal.SIGTERM)
    assert report["left"] == []


#: The fork-server's own rehearsal step (forkserver._rehearse): with colocation on, a first
#: rehearsal records the functions a daemon calls, their code objects are copied side by
#: side, and a second rehearsal warms the copies.
COLOCATE_PROBE = r"""
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from pyshim.shim import colocate, daemon, forkserver, rehearsal
for module in forkserver.PRELOAD:
    __import__(module)
serve_code, frame_code = daemon._serve.__code__, forkserver._become_daemon.__code__
forkserver._rehearse(rehearsal, sys.argv[1])
print(json.dumps({
    "serve_moved": daemon._serve.__code__ is not serve_code,
    "serve_kept": any(code is serve_code for code in colocate._retired),
    "uncalled_moved": forkserver._become_daemon.__code__ is not frame_code,
    "retired": len(colocate._retired),
}))
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_the_forkserver_copies_the_code_a_rehearsal_runs_side_by_side(
        tmp_path: Path, enabled: bool) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
    if not enabled:
        env["PYSHIM_FORKSERVER_COLOCATE"] = "0"
    result = subprocess.run([sys.executable, "-c", COLOCATE_PROBE, str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert "rehearsal failed" not in result.stderr
    report = json.loads(result.stdout)
    assert report["uncalled_moved"] is False  # a rehearsal never runs the fork child's path
    assert os.listdir(tmp_path) == []
    if enabled:
        assert report["serve_moved"] is True and report["serve_kept"] is True
        assert report["retired"] > 100, report  # ~520 on Python 3.11
        assert "colocated the code of" in result.stderr
    else:
        assert report == {"serve_moved": False, "serve_kept": False, "uncalled_moved": False,
                          "retired": 0}
        assert "colocated" not in result.stderr
