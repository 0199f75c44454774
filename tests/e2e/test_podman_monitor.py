"""podman 4.3 driving a conmon-compatible monitor: the real conmon 2.1.6 and pyshim side by side.

Every scenario runs once per monitor in :data:`MONITORS` and asserts what podman shows with the
real conmon (observed on Debian 12: podman 4.3.1, conmon 2.1.6, runc 1.1.5), so a monitor that
passes behaves alike. ``MONITORS`` is both, the real conmon and pyshim's (``bin/pyshim-conmon``
of this checkout), in the same run; ``PYSHIM_TEST_MONITORS=conmon`` (or ``pyshim``) narrows it.
Where pyshim is specified to differ on purpose (a conmon 2.1.6 bug, spec §11.3) the expectation
says so next to the monitor's name.

No timing assertions: every wait is bounded and waits for a positive condition.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import require_e2e
from tests.e2e.podman import MONITOR_PATHS, PrivatePodman, monitors_under_test
from tests.e2e.spawning import Spawned

#: The one list every scenario is parametrised by.
MONITORS = monitors_under_test()

BUSYBOX = "/bin/busybox"
SH = "/bin/sh"


class Monitored(PrivatePodman):
    """A :class:`PrivatePodman` that knows the name of its monitor."""

    def __init__(self, base_dir: Path, name: str) -> None:
        super().__init__(base_dir, MONITOR_PATHS[name])
        self.name = name


@pytest.fixture(params=MONITORS)
def podman(request: pytest.FixtureRequest) -> Iterator[Monitored]:
    """A started private podman whose ``conmon_path`` is the monitor under test."""
    name: str = request.param
    require_e2e(("podman", "runc"), (BUSYBOX, str(MONITOR_PATHS[name])))
    instance = Monitored(Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp")), name)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


# --------------------------------------------------------------------------------- terminal


class Terminal:
    """A pty of the test: podman gets the slave as stdio and controlling terminal."""

    def __init__(self, rows: int, columns: int) -> None:
        self.master, self.slave = pty.openpty()
        self.resize(rows, columns)
        self.output = b""

    def resize(self, rows: int, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))

    def spawn(self, podman: PrivatePodman, *args: str) -> Spawned:
        try:
            return podman.spawn(*args, stdio=(self.slave,) * 3, ctty=True)
        finally:
            os.close(self.slave)
            self.slave = -1

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, needle: bytes, timeout: float = 60.0) -> bytes:
        """Output until ``needle`` appears (after what earlier calls consumed)."""
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout} s: {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: every slave closed
                    data = b""
                if not data:
                    raise AssertionError(f"terminal closed before {needle!r}: {self.output!r}")
                self.output += data
        found, _, self.output = self.output.partition(needle)
        return found + needle

    def wait_for_size(self, rows: int, columns: int, timeout: float = 60.0) -> None:
        """Run ``stty size`` in the shell on the other end until it prints ``rows columns``:
        podman passes sizes to the monitor asynchronously (``ctl`` FIFO), so ask again."""
        expected = f"{rows} {columns}\r\n".encode()
        deadline = time.monotonic() + timeout
        while True:
            self.write(b"stty size\n")
            self.read_until(b"stty size\r\n", timeout)  # the echo
            answer = self.read_until(b"\r\n", timeout)
            if answer == expected:
                return
            assert time.monotonic() < deadline, f"the container never saw {expected!r}"
            time.sleep(0.2)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    opened = Terminal(24, 80)
    try:
        yield opened
    finally:
        opened.close()


# -------------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param([SH, "-c", "echo out; echo err >&2"], 0, id="0"),
        pytest.param([SH, "-c", "echo out; echo err >&2; exit 3"], 3, id="3"),
    ],
)
def test_run_rm_exit_code_and_output(podman: Monitored, command: list[str], code: int) -> None:
    result = podman.run("run", "--rm", *podman.container_args(), *command)
    assert (result.returncode, result.stdout, result.stderr) == (code, "out\n", "err\n")
    assert podman.run("ps", "--all", "--quiet").stdout == ""


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        pytest.param(["/bin/no-such-command"], 127, "command that was not found", id="127"),
        pytest.param(["/etc"], 126, "permission denied", id="126"),
    ],
)
def test_run_rm_command_cannot_start(
    podman: Monitored, command: list[str], code: int, message: str
) -> None:
    """runc's error reaches podman through the monitor's sync message and the oci-log."""
    result = podman.run("run", "--rm", *podman.container_args(), *command)
    assert result.returncode == code
    assert message in result.stderr
    assert podman.run("ps", "--all", "--quiet").stdout == ""


def test_run_interactive_stdin(podman: Monitored) -> None:
    """``run -i``: the monitor gets podman's stdin pipe as its fd 0 (``-i``) and relays it."""
    result = podman.run("run", "--rm", "-i", *podman.container_args(), SH, "-c", "wc -c; exit 4",
                        input="y" * 300000)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (4, "300000", "")


def test_run_detached_logs_stdout_stderr_and_a_long_line(podman: Monitored) -> None:
    long_line = "x" * 20000
    container = podman.detached(
        SH, "-c", "echo out; echo err >&2; head -c 20000 /dev/zero | tr '\\0' x; echo; exit 4"
    )
    assert podman.run("wait", container, check=True).stdout == "4\n"
    logs = podman.run("logs", container, check=True)
    assert logs.stdout == f"out\n{long_line}\n"
    assert logs.stderr == "err\n"


def test_log_opt_max_size_truncates_the_log(podman: Monitored) -> None:
    """``--log-opt max-size=10k`` (``--log-size-max 10000``): the file is started afresh when
    a record would exceed the size, so only the last records remain."""
    container = podman.detached(
        SH, "-c", "for i in $(seq 1 30); do head -c 999 /dev/zero | tr '\\0' a; echo $i; done",
        options=("--log-opt", "max-size=10k"),
    )
    assert podman.run("wait", container, check=True).stdout == "0\n"
    numbers = [int(line.lstrip("a")) for line in podman.logs(container).splitlines()]
    assert numbers, "nothing left in the log"
    assert numbers == list(range(numbers[0], 31))
    assert numbers[0] > 1
    assert (podman.bundle(container) / "ctr.log").stat().st_size <= 10000 + 2000


def test_logs_follow_across_a_reopen(podman: Monitored) -> None:
    """podman 4.3 has no command that reopens a container's log; the monitor reopens it on a
    ``ctl`` message of type 2 (what CRI-O sends after rotating; spec §8.2.7, §10). ``podman logs
    -f`` keeps following the new file, and a later ``podman logs`` shows only the new file."""
    container = podman.detached(
        SH, "-c",
        "i=0; while [ ! -e /stop ]; do echo line$i; i=$((i+1)); sleep 0.1; done; echo done",
    )
    with tempfile.TemporaryFile() as output:
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            follower = podman.spawn("logs", "-f", container, stdio=(null, output.fileno()))
        finally:
            os.close(null)
        follower_closed = False
        try:
            def followed() -> str:
                output.seek(0)
                return output.read().decode()

            podman.wait_until(lambda: "line2\n" in followed(), what="logs -f shows line2")
            ctl = os.open(podman.bundle(container) / "ctl", os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(ctl, b"2 0 0\n")
            finally:
                os.close(ctl)
            def replaced() -> str:
                text = podman.logs(container)
                return text if text and "line0\n" not in text else ""

            podman.wait_until(lambda: bool(replaced()), what="the log file was replaced")
            first_after = int(replaced().split()[0].removeprefix("line"))
            podman.wait_until(lambda: f"line{first_after + 2}\n" in followed(),
                              what="logs -f shows lines written after the reopen")
            (podman.rootfs / "stop").touch()
            assert follower.wait(60) == 0
            follower_closed = True
        finally:
            if not follower_closed:
                follower.close()
        lines = followed().splitlines()
    assert lines[0] == "line0" and lines[-1] == "done"
    numbers = [int(line.removeprefix("line")) for line in lines[:-1]]
    assert numbers == sorted(set(numbers))
    assert podman.logs(container).splitlines()[0] != "line0"


def test_exec_output_and_exit_code(podman: Monitored) -> None:
    container = podman.detached("/bin/sleep", "1000")
    result = podman.run("exec", container, SH, "-c", "echo eo; echo ee >&2; exit 5")
    assert (result.returncode, result.stdout, result.stderr) == (5, "eo\n", "ee\n")
    assert podman.run("exec", container, "/bin/true").returncode == 0
    assert podman.state(container)["Running"] is True


def test_exec_interactive_stdin(podman: Monitored) -> None:
    container = podman.detached("/bin/sleep", "1000")
    result = podman.run("exec", "-i", container, "/bin/wc", "-c", input="x" * 100000)
    assert (result.returncode, result.stdout.strip()) == (0, "100000")
    result = podman.run("exec", "-i", container, "/bin/cat", input="hello\nworld\n")
    assert (result.returncode, result.stdout) == (0, "hello\nworld\n")


def test_exec_tty(podman: Monitored) -> None:
    container = podman.detached("/bin/sleep", "1000")
    result = podman.run("exec", "-t", container, SH, "-c", "tty; echo x; exit 2")
    assert result.returncode == 2
    assert result.stdout == "/dev/pts/0\r\nx\r\n"


def test_attach_and_detach(podman: Monitored, terminal: Terminal) -> None:
    container = podman.detached(SH, options=("-i", "-t"))
    terminal.resize(30, 90)
    attach = terminal.spawn(podman, "attach", "--detach-keys", "ctrl-x", container)
    try:
        terminal.write(b"echo hi-$((40+2))\n")
        terminal.read_until(b"hi-42\r\n")
        terminal.wait_for_size(30, 90)  # podman resized the container's terminal
        terminal.write(b"\x18")  # the detach key, alone
        assert attach.wait(60) == 0
    finally:
        attach.close()
    assert podman.state(container)["Running"] is True
    # The monitor still serves the attach socket after a client detached.
    again = Terminal(24, 80)
    try:
        second = again.spawn(podman, "attach", container)
        try:
            again.write(b"echo back-$((1+1))\n")
            again.read_until(b"back-2\r\n")
            again.write(b"exit 3\n")
            assert second.wait(60) == 0  # podman 4.3's attach: 0 when the container exits
        finally:
            second.close()
    finally:
        again.close()
    assert podman.run("wait", container, check=True).stdout == "3\n"


def test_attach_without_a_terminal(podman: Monitored) -> None:
    """Non-tty attach: stdin reaches the container through the attach socket and its end closes
    the container's stdin; stdout and stderr come back apart (podman 4.3 adds a final newline
    to stdout)."""
    container = podman.detached(SH, "-c", "echo ready; cat; echo end; echo e >&2; exit 6",
                                options=("-i",))
    podman.wait_until(lambda: "ready" in podman.logs(container), what="container started")
    result = podman.run("attach", container, input="hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\nend\n\n", "e\n")
    assert podman.run("wait", container, check=True).stdout == "6\n"
    assert podman.logs(container) == "ready\nhello\nend\n"


def test_run_interactive_tty_with_resize(podman: Monitored, terminal: Terminal) -> None:
    run = terminal.spawn(podman, "run", "--rm", "-it", *podman.container_args(), SH)
    try:
        terminal.wait_for_size(24, 80)
        terminal.resize(40, 100)  # SIGWINCH to podman, which tells the monitor
        terminal.wait_for_size(40, 100)
        terminal.write(b"exit 7\n")
        assert run.wait(60) == 7
    finally:
        run.close()
    assert podman.run("ps", "--all", "--quiet").stdout == ""


def test_stop_with_sigterm_trapped(podman: Monitored) -> None:
    container = podman.detached(
        SH, "-c", "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    )
    podman.wait_until(lambda: "ready" in podman.logs(container), what="trap installed")
    assert podman.run("stop", "-t", "60", container).returncode == 0
    state = podman.state(container)
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    assert podman.logs(container) == "ready\nbye\n"


def test_stop_with_sigterm_ignored_kills_after_timeout(podman: Monitored) -> None:
    container = podman.detached(
        SH, "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"
    )
    podman.wait_until(lambda: "ready" in podman.logs(container), what="trap installed")
    result = podman.run("stop", "-t", "2", container)
    assert result.returncode == 0
    assert "resorting to SIGKILL" in result.stderr
    state = podman.state(container)
    assert (state["Status"], state["ExitCode"]) == ("exited", 137)


def test_kill(podman: Monitored) -> None:
    container = podman.detached(
        SH, "-c", "trap 'exit 10' USR1; echo ready; while true; do sleep 0.1; done"
    )
    podman.wait_until(lambda: "ready" in podman.logs(container), what="trap installed")
    assert podman.run("kill", "--signal", "USR1", container).returncode == 0
    assert podman.run("wait", container, check=True).stdout == "10\n"
    other = podman.detached("/bin/sleep", "1000")
    assert podman.run("kill", other).returncode == 0
    assert podman.run("wait", other, check=True).stdout == "137\n"
    assert podman.state(other)["ExitCode"] == 137


def test_wait_and_inspect_exit_code(podman: Monitored) -> None:
    container = podman.detached(SH, "-c", "exit 42")
    assert podman.run("wait", container, check=True).stdout == "42\n"
    state = podman.state(container)
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 42, False)
    assert (state["Running"], state["Pid"]) == (False, 0)
    assert podman.run("wait", container, check=True).stdout == "42\n"  # again, once exited


def test_inspect_after_memory_limit_exceeded(podman: Monitored) -> None:
    """The container is OOM-killed (137). conmon 2.1.6 writes its ``oom`` marker into its
    cwd, which under podman is podman's cwd, so podman reports ``OOMKilled: false`` (spec §11.3
    [quirk]); pyshim writes ``<bundle>/oom`` as specified, so podman reports true."""
    container = podman.detached(SH, "-c", "tail /dev/zero", options=("--memory", "20m"))
    assert podman.run("wait", container, check=True).stdout == "137\n"
    state = podman.state(container)
    assert state["ExitCode"] == 137
    if podman.name == "conmon":
        assert state["OOMKilled"] is False
        assert (podman.base_dir / "oom").exists()  # podman's cwd (the spawn cwd)
    else:
        assert state["OOMKilled"] is True
        assert not (podman.base_dir / "oom").exists()


def test_restart(podman: Monitored) -> None:
    container = podman.detached(SH, "-c", "echo started; sleep 1000")
    before = podman.state(container)
    assert podman.run("restart", "-t", "0", container).returncode == 0
    after = podman.state(container)
    assert after["Running"] is True
    assert after["ConmonPid"] != before["ConmonPid"]
    assert after["Pid"] != before["Pid"]
    podman.wait_until(lambda: podman.logs(container) == "started\nstarted\n",
                      what="the restarted container logged again")
    podman.wait_until(lambda: not psutil.pid_exists(before["ConmonPid"]),
                      what="the first monitor exited")


def test_run_rm_detached_is_removed_by_the_exit_command(podman: Monitored) -> None:
    """Nobody waits for a ``run -d --rm`` container: the monitor's ``--exit-command``
    (``podman container cleanup --rm``) removes it."""
    container = podman.detached(SH, "-c", "echo bye", options=("--rm",))
    podman.wait_until(lambda: not podman.exists(container), what="container removed")
    events = podman.run("events", "--stream=false", "--filter", f"container={container}",
                        "--format", "{{.Status}}", check=True).stdout.split()
    assert events[-2:] == ["died", "remove"]
    assert not podman.bundle(container).exists()


def test_monitor_sigkilled_under_a_running_container(podman: Monitored) -> None:
    """podman 4.3 does not watch the monitor: with it SIGKILLed the container runs on, podman
    still reports it running (and keeps doing so after the container is killed: nobody writes
    its exit file), exec still works, and ``rm -f`` removes it."""
    container = podman.detached(SH, "-c", "echo hello; sleep 1000")
    state = podman.state(container)
    monitor, init = psutil.Process(state["ConmonPid"]), psutil.Process(state["Pid"])
    monitor.send_signal(signal.SIGKILL)
    monitor.wait(30)
    assert init.is_running()
    assert podman.state(container)["Running"] is True
    assert podman.run("exec", container, "/bin/echo", "still").stdout == "still\n"
    assert podman.logs(container) == "hello\n"
    assert podman.run("kill", container).returncode == 0
    init.wait(30)
    assert podman.state(container)["Status"] == "running"
    assert podman.run("rm", "--force", container).returncode == 0
    assert not podman.exists(container)
