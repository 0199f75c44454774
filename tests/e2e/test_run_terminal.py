"""`pyshim run -t` and bundles with process.terminal: true, under a real pty (the test holds its
master, `pyshim run` gets the slave as its controlling terminal and fds 0-2): the container
sees a terminal of our size, follows our resizes (SIGWINCH), gets our keystrokes raw, and our
terminal's settings are restored afterwards. Each run goes below tests/e2e/subreaper.py, and
leaves no runc state, cgroup or temporary file (assert_clean).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from tests.e2e.conftest import unique_id
from tests.e2e.containerd import SUBREAPER
from tests.e2e.test_run import (
    RUN_TIMEOUT,
    PyshimRun,
    _kill_below,
    assert_clean,
    pyshim_command,
    rootfs,  # noqa: F401  (fixture)
)


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def _become_session_leader_with_tty() -> None:
    # After start_new_session's setsid(): fd 0 (the pty slave) becomes our controlling
    # terminal, so its SIGWINCH reaches pyshim run (in the foreground process group).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyRun:
    """`pyshim ARGS` below the subreaper wrapper, on a fresh pty of `rows` x `columns`."""

    def __init__(self, args: list[str], tmpdir: Path, container_id: str,
                 rows: int = 21, columns: int = 77) -> None:
        self.container_id = container_id
        self.tmpdir = tmpdir
        tmpdir.mkdir(exist_ok=True)
        self.master, self.slave = os.openpty()
        _set_size(self.master, rows, columns)
        self.initial_mode = termios.tcgetattr(self.slave)
        self.output = b""
        self.process = subprocess.Popen(
            [sys.executable, str(SUBREAPER), "--parent", str(os.getpid()), "--",
             *pyshim_command(), *args],
            stdin=self.slave, stdout=self.slave, stderr=self.slave, start_new_session=True,
            preexec_fn=_become_session_leader_with_tty,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )

    def _read(self, timeout: float, *, idle: bool = True) -> bool:
        """Read what is there within timeout; False once the pty has no writer left (or,
        with idle=False, nothing came within timeout)."""
        if not select.select([self.master], [], [], timeout)[0]:
            return idle
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave fd closed
            return False
        self.output += data
        return bool(data)

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"no {text!r} on the terminal; got {self.output!r}")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def abort(self) -> None:
        """A failed test's clean-up: SIGTERM twice through the wrapper (pyshim run forwards
        the first, kills the container on the second, then deletes it), SIGKILL below the
        wrapper by PID only if that did not end it."""
        for _ in range(2):
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
                break
        if self.process.poll() is None:
            _kill_below(self.process.pid)
            self.process.wait(timeout=RUN_TIMEOUT)
        os.close(self.slave)
        os.close(self.master)

    def finish(self) -> int:
        """The wrapper's exit status, once every process below it is gone; then clean-up
        checks, and our terminal's settings as before the run."""
        status = self.process.wait(timeout=RUN_TIMEOUT)
        while self._read(0.2, idle=False):  # what is still in the pty (we hold the slave)
            pass
        assert termios.tcgetattr(self.slave) == self.initial_mode, "terminal mode not restored"
        os.close(self.slave)
        os.close(self.master)
        assert_clean((self.container_id,), self.tmpdir)
        return status


def test_run_t_gives_our_size_and_follows_resizes(
    tmp_path: Path, rootfs: Path  # noqa: F811
) -> None:
    container_id = unique_id("run-tty")
    script = ('[ -t 0 ] && echo is-a-tty; stty size; '
              'while read line; do [ "$line" = q ] && exit 7; stty size; done')
    run = PtyRun(["run", "-t", "--id", container_id, "--rootfs", str(rootfs), "--",
                  "/bin/sh", "-c", script], tmp_path / "tmp", container_id)
    try:
        run.wait_for("is-a-tty")
        run.wait_for("21 77")
        _set_size(run.master, 30, 100)
        # SIGWINCH is asynchronous: ask again until the container reports the new size.
        deadline = time.monotonic() + 20
        while b"30 100" not in run.output:
            assert time.monotonic() < deadline, f"resize never arrived: {run.output!r}"
            run.type("again\n")
            run._read(0.5)
        run.type("q\n")
    except BaseException:
        run.abort()
        raise
    assert run.finish() == 7, run.output


def test_run_t_passes_keystrokes_raw(tmp_path: Path, rootfs: Path) -> None:  # noqa: F811
    """The container makes its terminal raw and reads 3 bytes: typed without a newline, they
    reach it only if our terminal is raw too (a cooked one holds them until a newline)."""
    container_id = unique_id("run-raw")
    run = PtyRun(["run", "-t", "--id", container_id, "--rootfs", str(rootfs), "--",
                  "/bin/sh", "-c", "stty raw -echo; echo ready; head -c 3 | tr abc XYZ; exit 5"],
                 tmp_path / "tmp", container_id)
    try:
        run.wait_for("ready")
        run.type("abc")
        run.wait_for("XYZ")
    except BaseException:
        run.abort()
        raise
    assert run.finish() == 5, run.output


def test_a_default_runc_spec_bundle_runs_with_its_terminal(
    tmp_path: Path, rootfs: Path  # noqa: F811
) -> None:
    """`runc spec` as is (terminal: true, args ["sh"], read-only root) but for root.path."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = bundle / "config.json"
    spec = json.loads(config.read_text())
    assert spec["process"]["terminal"] is True and spec["process"]["args"] == ["sh"]
    spec["root"]["path"] = str(rootfs)
    config.write_text(json.dumps(spec))
    container_id = unique_id("run-spec")
    run = PtyRun(["run", "--id", container_id, "--bundle", str(bundle)], tmp_path / "tmp",
                 container_id)
    try:
        run.type("echo hi-$((6*7))\n")
        run.wait_for("hi-42")
        run.type("exit 3\n")
    except BaseException:
        run.abort()
        raise
    assert run.finish() == 3, run.output
    assert sorted(path.name for path in bundle.iterdir()) == ["config.json"]


def test_run_t_without_a_terminal_of_ours(tmp_path: Path, rootfs: Path) -> None:  # noqa: F811
    """stdin /dev/null, stdout a pipe: the container still gets a terminal (nothing to make
    raw or to take the size from)."""
    container_id = unique_id("run-tty-pipe")
    finished = PyshimRun(
        ["run", "-t", "--id", container_id, "--rootfs", str(rootfs), "--", "/bin/sh", "-c",
         "[ -t 1 ] && echo is-a-tty; exit 4"],
        tmp_path / "tmp", container_ids=(container_id,),
    ).finish()
    assert finished.status == 4, finished
    assert finished.stdout.replace("\r", "") == "is-a-tty\n"
    assert finished.stderr == ""
