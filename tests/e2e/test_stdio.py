"""Terminals and log URIs through real ``ctr``: ``ctr run -t`` and ``ctr task exec -t`` under a
pty of the test's own (typed input, window size and its changes as the container sees them with
``stty size``), ``--log-uri file://`` and ``--log-uri binary://`` with a logging binary of the
test's own (its argv, environment, cwd and fds, its readiness, its end), for each runtime under
test.

Facts of ctr 1.6 these tests rely on: ``ctr run -t`` puts its own terminal in raw mode, sends the
container a ResizePty with its window size right after start and again on each SIGWINCH;
``--log-uri`` gives the shim no stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from google.protobuf import any_pb2, empty_pb2

from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.ttrpc import Client
from tests.e2e.conftest import (
    TASK,
    assert_no_leftovers,
    call_shim,
    ctr_argv,
    is_pyshim,
    shim_address,
    unique_id,
    wait_until,
)
from tests.e2e.containerd import PrivateContainerd

PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"


def run_args(runtime: str, rootfs: Path) -> list[str]:
    return ["--runtime", runtime, "--env", "PATH=/bin:/sbin", "--rootfs", str(rootfs)]


# --------------------------------------------------------------------------- a terminal


def set_window_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class PtyCtr:
    """``ctr`` running with a fresh pty as its controlling terminal, as a user's shell has it.

    The test holds the master: what it writes is typed, what it reads is the screen.
    """

    def __init__(self, argv: list[str], rows: int, columns: int) -> None:
        self.master, slave = os.openpty()
        set_window_size(self.master, rows, columns)
        try:
            self.process = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                # The session leader's first TIOCSCTTY makes it the controlling terminal,
                # with ctr's group in the foreground (so it gets SIGWINCH).
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
        finally:
            os.close(slave)
        self.screen = b""

    def read_until(self, wanted: bytes, timeout: float = 20.0) -> bytes:
        """Everything shown so far, once it contains ``wanted``."""
        deadline = time.monotonic() + timeout
        while wanted not in self.screen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{wanted!r} not shown within {timeout} s: {self.screen!r}")
            if not self._read(remaining):
                raise AssertionError(f"terminal closed before {wanted!r}: {self.screen!r}")
        return self.screen

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 0.5))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError as error:
            if error.errno == errno.EIO:  # ctr exited: every slave fd is closed
                return False
            raise
        self.screen += data
        return bool(data)

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def finish(self, timeout: float = 30.0) -> int:
        """ctr's exit status, after reading the rest of the screen."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        with contextlib.suppress(OSError):
            while self._read(0.1) and self.process.poll() is not None:
                ready, _, _ = select.select([self.master], [], [], 0)
                if not ready:
                    break
        return self.process.wait(max(deadline - time.monotonic(), 1))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


@contextlib.contextmanager
def pty_ctr(
    containerd: PrivateContainerd, *args: str, rows: int = 33, columns: int = 101
) -> Iterator[PtyCtr]:
    command = PtyCtr(ctr_argv(containerd, *args), rows, columns)
    try:
        yield command
    finally:
        command.close()


#: Prints the terminal size once ctr has set it, then again each time it changes. (Until ctr's
#: first ResizePty the size is "0 0", and right after start stty may even fail.)
SIZE_WATCHER = (
    "size() { stty size 2>/dev/null; }; "
    "s=$(size); until case \"$s\" in [1-9]*) true;; *) false;; esac; do "
    "sleep 0.05; s=$(size); done; echo size=$s; "
    "t=$s; until [ \"$t\" != \"$s\" ] && [ -n \"$t\" ]; do sleep 0.05; t=$(size); done; "
    "echo size=$t"
)


def test_run_with_terminal_sees_window_size_and_resize(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("tty")
    with pty_ctr(shim_containerd, "run", "--rm", "-t", *run_args(runtime, busybox_rootfs),
                 cid, "/bin/sh", "-c", SIZE_WATCHER, rows=33, columns=101) as terminal:
        terminal.read_until(b"size=33 101")
        # Resizing our terminal sends ctr SIGWINCH; ctr forwards the size with ResizePty.
        set_window_size(terminal.master, 40, 120)
        screen = terminal.read_until(b"size=40 120")
        assert terminal.finish() == 0, screen
    assert_no_leftovers(shim_containerd, [cid])


def test_run_with_terminal_relays_typed_input(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("tty-in")
    with pty_ctr(shim_containerd, "run", "--rm", "-t", *run_args(runtime, busybox_rootfs),
                 cid, "/bin/sh", "-c", "tty; read line; echo got:$line; exit 5") as terminal:
        terminal.read_until(b"/dev/pts/")
        terminal.type(b"hello terminal\r")
        screen = terminal.read_until(b"got:hello terminal")
        # The container's terminal echoes what was typed (and ends the line with \r\n, which
        # our own terminal's output processing may turn into \r\r\n).
        assert re.search(rb"/dev/pts/\d+\r+\nhello terminal\r+\ngot:", screen), screen
        assert terminal.finish() == 5, terminal.screen
    assert_no_leftovers(shim_containerd, [cid])


def test_exec_with_terminal(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("tty-exec")
    shim_containerd.ctr("run", "-d", *run_args(runtime, busybox_rootfs), cid,
                        "/bin/sleep", "1000")
    try:
        with pty_ctr(shim_containerd, "task", "exec", "-t", "--exec-id", "term", cid,
                     "/bin/sh", "-c", f"tty; {SIZE_WATCHER}", rows=21, columns=77) as terminal:
            terminal.read_until(b"size=21 77")
            assert b"/dev/pts/" in terminal.screen
            set_window_size(terminal.master, 22, 78)
            terminal.read_until(b"size=22 78")
            assert terminal.finish() == 0, terminal.screen
    finally:
        shim_containerd.ctr("task", "kill", "-s", "KILL", cid, check=False)
        wait_until(lambda: shim_containerd.ctr("task", "delete", cid, check=False)
                   .returncode == 0, what=f"task {cid} deleted")
        shim_containerd.ctr("container", "delete", cid, check=False)
    assert_no_leftovers(shim_containerd, [cid])


# --------------------------------------------------------------------------- log URIs


def test_log_uri_file_appends_both_streams_and_creates_parents(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("file")
    log = shim_containerd.base_dir / "logs" / "deep" / f"{cid}.log"
    log.parent.parent.mkdir()
    for round_ in ("first", "second"):
        shim_containerd.ctr(
            "run", "--rm", "--log-uri", f"file://{log}", *run_args(runtime, busybox_rootfs),
            cid, "/bin/sh", "-c", f"echo {round_}-out; sleep 0.1; echo {round_}-err >&2",
        )
    assert log.read_text() == "first-out\nfirst-err\nsecond-out\nsecond-err\n"
    assert oct(log.stat().st_mode & 0o777) == oct(0o644)
    assert_no_leftovers(shim_containerd, [cid])


#: A logging binary (spec §6.4): records how it was started, copies fd 3 and fd 4 to files in
#: its own directory, signals ready by closing fd 5.
LOGGER = """#!/bin/sh
out=$(dirname "$0")
echo $$ > "$out/pid"
echo "$@" > "$out/args"
tr '\\0' '\\n' < /proc/$$/environ > "$out/env"
pwd > "$out/cwd"
stdio=$(readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2)
echo "$stdio" > "$out/stdio"
exec 5>&-
cat <&3 > "$out/stdout" &
cat <&4 > "$out/stderr" &
wait
echo done > "$out/finished"
"""

#: Never signals ready: its child inherits fd 5 and keeps it open.
STUCK_LOGGER = """#!/bin/sh
echo $$ > "$(dirname "$0")/pid"
exec sleep 1000
"""


def write_logger(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "logger"
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_log_uri_binary_runs_the_logger_as_specified(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    cid = unique_id("binary")
    output = shim_containerd.base_dir / f"logger-{cid}"
    logger = write_logger(output, LOGGER)
    uri = f"binary://{logger}?tag=t1&level=info"
    result = shim_containerd.ctr(
        "run", "--rm", "--log-uri", uri, *run_args(runtime, busybox_rootfs), cid,
        "/bin/sh", "-c",
        "echo to-stdout; echo to-stderr >&2; head -c 300000 /dev/zero | tr '\\0' x",
    )
    assert result.stdout == ""
    assert (output / "stdout").read_text() == "to-stdout\n" + "x" * 300000
    assert (output / "stderr").read_text() == "to-stderr\n"
    words = (output / "args").read_text().split()
    # Key, value pairs; runc-v2 takes them from a Go map, so in any order.
    assert sorted(zip(words[::2], words[1::2], strict=True)) == [("level", "info"),
                                                                  ("tag", "t1")], words
    assert sorted((output / "env").read_text().split()) == [
        f"CONTAINER_ID={cid}", "CONTAINER_NAMESPACE=default"
    ]
    assert (output / "stdio").read_text().split() == ["/dev/null"] * 3
    assert (output / "cwd").read_text().strip().endswith(f"/default/{cid}")
    if is_pyshim(runtime):
        # pyshim closes its pipe ends at start, so the logger sees EOF when the container is
        # done and finishes on its own; runc-v2 holds them until delete, then sends SIGTERM.
        wait_until(lambda: (output / "finished").exists(), what="the logger finished")
    logger_pid = int((output / "pid").read_text())
    wait_until(lambda: not psutil.pid_exists(logger_pid), what=f"logger {logger_pid} gone")
    assert_no_leftovers(shim_containerd, [cid])


def test_log_uri_binary_that_never_signals_ready_fails_the_create(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    if not is_pyshim(runtime):
        pytest.skip("runc-v2 waits forever for such a logger (spec §6.4)")
    cid = unique_id("stuck")
    output = shim_containerd.base_dir / f"logger-{cid}"
    logger = write_logger(output, STUCK_LOGGER)
    result = shim_containerd.ctr(
        "run", "--rm", "--log-uri", f"binary://{logger}",
        *run_args(runtime, busybox_rootfs), cid, "/bin/true", check=False,
    )
    assert result.returncode != 0
    assert "did not signal ready (close fd 5) within 10 s" in result.stderr, result.stderr
    assert str(logger) in result.stderr
    logger_pid = int((output / "pid").read_text())
    wait_until(lambda: not psutil.pid_exists(logger_pid), what=f"logger {logger_pid} gone")
    shim_containerd.ctr("container", "delete", cid, check=False)
    assert_no_leftovers(shim_containerd, [cid])


#: Never signals ready either, and has a child of its own (which also holds fd 5).
STUCK_LOGGER_WITH_CHILD = """#!/bin/sh
out=$(dirname "$0")
echo $$ > "$out/pid"
sleep 1000 &
echo $! > "$out/child"
exec sleep 1000
"""


def test_a_logger_that_never_gets_ready_is_killed_with_its_children(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """The logger runs in a session of its own; giving up on it kills its whole process
    group, so a child it started does not keep running (it did before: only the logger's
    own pid was signalled)."""
    if not is_pyshim(runtime):
        pytest.skip("runc-v2 waits forever for such a logger (spec §6.4)")
    cid = unique_id("stuck-kids")
    output = shim_containerd.base_dir / f"logger-{cid}"
    logger = write_logger(output, STUCK_LOGGER_WITH_CHILD)
    child_pid: int | None = None
    try:
        result = shim_containerd.ctr(
            "run", "--rm", "--log-uri", f"binary://{logger}",
            *run_args(runtime, busybox_rootfs), cid, "/bin/true", check=False,
        )
        assert result.returncode != 0
        assert "did not signal ready" in result.stderr, result.stderr
        logger_pid = int((output / "pid").read_text())
        child_pid = int((output / "child").read_text())
        wait_until(lambda: not _running(logger_pid), what=f"logger {logger_pid} gone")
        child = child_pid
        wait_until(lambda: not _running(child), what=f"the logger's child {child} gone")
    finally:
        if child_pid is not None and _running(child_pid):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(child_pid).name() == "sleep":
                    psutil.Process(child_pid).kill()
        shim_containerd.ctr("container", "delete", cid, check=False)
    assert_no_leftovers(shim_containerd, [cid])


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_log_uri_binary_missing_is_a_clear_error(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    if not is_pyshim(runtime):
        pytest.skip("pyshim's own message")
    cid = unique_id("nologger")
    missing = shim_containerd.base_dir / "no-such-logger"
    result = shim_containerd.ctr(
        "run", "--rm", "--log-uri", f"binary://{missing}", *run_args(runtime, busybox_rootfs),
        cid, "/bin/true", check=False,
    )
    assert result.returncode != 0
    assert f"cannot start logging binary {missing}" in result.stderr, result.stderr
    assert f"container {cid} process {cid}" in result.stderr
    shim_containerd.ctr("container", "delete", cid, check=False)
    assert_no_leftovers(shim_containerd, [cid])


# ------------------------------------------------------------ CloseIO on a terminal


def test_close_io_ends_a_terminal_process_input(
    shim_containerd: PrivateContainerd, runtime: str, busybox_rootfs: Path
) -> None:
    """An exec with a terminal reading its input until EOF: typed lines come back, and CloseIO
    (plus the client closing its writer) ends the input. ctr never sends CloseIO, so the test
    talks to the shim directly, with FIFOs of its own."""
    cid = unique_id("tty-close")
    shim_containerd.ctr("run", "-d", *run_args(runtime, busybox_rootfs), cid,
                        "/bin/sleep", "1000")
    fifos = shim_containerd.base_dir / f"fifos-{cid}"
    fifos.mkdir()
    stdin_path, stdout_path = fifos / "stdin", fifos / "stdout"
    os.mkfifo(stdin_path)
    os.mkfifo(stdout_path)
    reader = os.open(stdout_path, os.O_RDONLY | os.O_NONBLOCK)
    process = {"args": ["/bin/cat"], "env": ["PATH=/bin"], "cwd": "/", "terminal": True,
               "user": {"uid": 0, "gid": 0}}
    output = bytearray()

    async def read_until(wanted: bytes) -> None:
        async with asyncio.timeout(20):
            while wanted not in output:
                with contextlib.suppress(BlockingIOError):
                    output.extend(os.read(reader, 65536))
                await asyncio.sleep(0.02)

    async def scenario(client: Client) -> int:
        spec = any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=json.dumps(process).encode())
        # O_RDWR: a FIFO opened so never waits for the shim's reader (it opens at Start).
        writer = os.open(stdin_path, os.O_RDWR | os.O_NONBLOCK)
        try:
            await client.call(TASK, "Exec", shim_pb2.ExecProcessRequest(
                id=cid, exec_id="cat", terminal=True, stdin=str(stdin_path),
                stdout=str(stdout_path), spec=spec), empty_pb2.Empty, timeout=20)
            await client.call(TASK, "Start", shim_pb2.StartRequest(id=cid, exec_id="cat"),
                              shim_pb2.StartResponse, timeout=20)
            await client.call(TASK, "ResizePty", shim_pb2.ResizePtyRequest(
                id=cid, exec_id="cat", width=90, height=30), empty_pb2.Empty, timeout=20)
            os.write(writer, b"first line\n")
            await read_until(b"first line\r\nfirst line\r\n")  # the echo, then cat's copy
            await client.call(TASK, "CloseIO", shim_pb2.CloseIORequest(
                id=cid, exec_id="cat", stdin=True), empty_pb2.Empty, timeout=20)
        finally:
            os.close(writer)
        waited = await client.call(TASK, "Wait", shim_pb2.WaitRequest(id=cid, exec_id="cat"),
                                   shim_pb2.WaitResponse, timeout=20)
        await client.call(TASK, "Delete", shim_pb2.DeleteRequest(id=cid, exec_id="cat"),
                          shim_pb2.DeleteResponse, timeout=20)
        return waited.exit_status

    try:
        status = call_shim(shim_address(shim_containerd, cid), scenario)
        # pyshim types the terminal's EOF character: cat ends normally. runc-v2 hangs the
        # terminal up instead (SIGHUP, 129).
        assert status == (0 if is_pyshim(runtime) else 129), bytes(output)
    finally:
        os.close(reader)
        shim_containerd.ctr("task", "kill", "-s", "KILL", cid, check=False)
        wait_until(lambda: shim_containerd.ctr("task", "delete", cid, check=False)
                   .returncode == 0, what=f"task {cid} deleted")
        shim_containerd.ctr("container", "delete", cid, check=False)
    assert_no_leftovers(shim_containerd, [cid])
