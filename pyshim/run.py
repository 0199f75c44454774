"""`pyshim run`: one container in the foreground, driven by the engine the containerd shim uses
(process.Container, io.PipeIO relays of our own stdio or a terminal, the Reaper).

Owns running the container and its clean-up; the command line and bundle are run_args.py's, the
demo rootfs run_demo.py's, terminal mode run_terminal.py's. Never mounts anything, and never
leaves a container, runc state or generated bundle behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import stat
import sys
from dataclasses import dataclass

import uvloop

from pyshim import logfmt
from pyshim.errors import EngineError
from pyshim.io import PipeIO, StdioConfig
from pyshim.io.base import ProcessIO
from pyshim.io.fifo import InputSource, OutputTarget
from pyshim.io.log_relay import LogSink
from pyshim.logs import CriLogWriter
from pyshim.process.base import Process, Status
from pyshim.process.config import ContainerConfig
from pyshim.process.container import Container
from pyshim.reaper import Reaper, become_subreaper
from pyshim.run_args import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUNTIME_ERROR,
    NAMESPACE,
    RUNC_ROOT,
    Plan,
    RunError,
    UsageError,
    parser,
    prepare,
    remove_engine_files,
)
from pyshim.run_demo import make_busybox_rootfs
from pyshim.run_terminal import TerminalSession
from pyshim.runtime import OCIRuntimeError, RuntimeConfig

__all__ = ["NAMESPACE", "RUNC_ROOT", "make_busybox_rootfs", "run_main", "runc_state_dir"]

log = logging.getLogger("pyshim.run")

#: Forwarded to the container's init; the second one received kills it (SIGKILL).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: After SIGKILL at clean-up, how long the init may take to be reaped.
KILL_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    error: str | None = None


# ----------------------------------------------------------------------------- entry point


def run_main(argv: list[str]) -> int:
    """`pyshim run …` (and bare `pyshim`): the exit status of the container, or 125."""
    try:
        args = parser().parse_args(argv)
    except UsageError as error:
        print(f"pyshim run: {error} (see pyshim run --help)", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    command = list(args.command)
    if command[:1] == ["--"]:
        del command[0]
    _fill_standard_fds()
    _configure_logging(args.debug)
    temporary: list[str] = []
    try:
        try:
            if os.geteuid() != 0:
                raise RunError("pyshim run needs root (runc creates namespaces and cgroups)")
            become_subreaper()
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            plan = prepare(args, command, temporary)
        except RunError as error:
            print(f"pyshim run: {error.message}", file=sys.stderr)
            return error.status
        outcome = uvloop.run(_run(plan))
        if outcome.error is not None:
            print(f"pyshim run: {outcome.error}", file=sys.stderr)
        elif plan.verbose:
            print(f"pyshim run: container {plan.container_id} exited with status "
                  f"{outcome.status}{_signal_note(outcome.status)}", file=sys.stderr)
        if plan.bundle_files_before is not None:
            remove_engine_files(plan.bundle, plan.bundle_files_before)
        return outcome.status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as error:  # a bug, or an OS error nobody expected: still one line
        log.debug("pyshim run failed", exc_info=True)
        print(f"pyshim run: {error.__class__.__name__}: {error}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    finally:
        for directory in temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _signal_note(status: int) -> str:
    if status > 128:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(status - 128).name})"
    return ""


def _fill_standard_fds() -> None:
    """A closed fd 0, 1 or 2 becomes /dev/null: otherwise the next pipe would take its number
    and be relayed to itself (and uvloop refuses to handle fds 0-2 as ordinary ones)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


class _Stderr:
    """fd 2 for log lines: the stderr relay makes it non-blocking, so wait a little when it is
    full instead of failing (a reader that never reads costs us a dropped line, not a hang)."""

    def write(self, text: str) -> int:
        data = text.encode(errors="replace")
        while data:
            try:
                data = data[os.write(2, data):]
            except BlockingIOError:
                if not select.select([], [2], [], 1.0)[1]:
                    break
            except OSError:
                break
        return len(text)

    def flush(self) -> None:
        pass


def _configure_logging(debug: bool) -> None:
    logfmt.configure(
        _Stderr(),  # type: ignore[arg-type]
        level=logging.DEBUG if debug else logging.WARNING,
        fields={"runtime": "pyshim-run", "pid": os.getpid()},
    )
    # The relays' only warning is a reader going away: for our own stdout that is the user's
    # `| head`, not news.
    logging.getLogger("pyshim.io").setLevel(logging.DEBUG if debug else logging.ERROR)


# ------------------------------------------------------------------------ the container


class _Listener:
    """The engine's reports: only logged (the exit comes from `init.wait()`)."""

    def process_started(self, process: Process) -> None:
        log.debug("%s: started, pid %d", process.label, process.pid)

    def process_exited(self, process: Process) -> None:
        log.debug("%s: exited with status %d", process.label, process.exit_status)

    def container_oom(self, container: Container) -> None:
        log.warning("container %s: out of memory", container.id)


def _relayable_input(fd: int) -> bool:
    """Whether fd can be relayed: open, and pollable or a regular file (which splice reads
    without polling). /dev/null and other non-tty devices cannot be polled, and a terminal
    of which we are not the foreground job must not be read: the container gets /dev/null."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISCHR(mode):
        return os.isatty(fd) and _in_foreground(fd)
    return not stat.S_ISDIR(mode)


def _in_foreground(tty: int) -> bool:
    """A background job reading its terminal would be stopped (SIGTTIN): it relays nothing."""
    try:
        return os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False


def _own_stdio(name: str, log_writer: CriLogWriter | None = None) -> PipeIO:
    """Relays between the container's pipes and dup()s of our fds 0, 1 and 2; with a log
    writer, stdout and stderr go to the CRI log first, then on to ours."""
    stdin = InputSource(os.dup(0)) if _relayable_input(0) else None
    outputs: list[OutputTarget | LogSink | None] = []
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        try:
            target: OutputTarget | None = OutputTarget(os.dup(fd))
        except OSError:  # closed: the container gets /dev/null there (or only the log)
            target = None
        outputs.append(target if log_writer is None else LogSink(log_writer, stream, target))
    return PipeIO(stdin=stdin, stdout=outputs[0], stderr=outputs[1], name=name)


class _SignalForwarder:
    """SIGINT/SIGTERM/SIGHUP → the container's init; the second one received sends SIGKILL.

    Before the container is started, a signal only stops it from being started."""

    def __init__(self, loop: asyncio.AbstractEventLoop, container: Container) -> None:
        self.loop = loop
        self.container = container
        self.received: list[int] = []
        self.started = False
        self._sent = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        for signum in FORWARDED_SIGNALS:
            self.loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        log.debug("received %s", signal.Signals(signum).name)
        self.received.append(signum)
        if self.started:
            self._forward(signum)

    def mark_started(self) -> None:
        self.started = True
        for signum in self.received:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self._sent:
            signum = signal.SIGKILL
            with contextlib.suppress(OSError):
                os.write(2, f"pyshim run: killing container {self.container.id}\n".encode())
        self._sent += 1
        task = self.loop.create_task(self._kill(signum))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kill(self, signum: int) -> None:
        log.debug("container %s: sending %s", self.container.id, signal.Signals(signum).name)
        try:
            await self.container.init.state.kill(signum, False)
        except EngineError as error:  # already gone, or being deleted
            log.debug("container %s: kill: %s", self.container.id, error)

    async def close(self) -> None:
        for signum in FORWARDED_SIGNALS:
            self.loop.remove_signal_handler(signum)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _create_failure_status(message: str) -> int:
    """docker/podman's convention: 127 command not found, 126 not executable, else 125."""
    if 'exec: "' in message:
        if "not found" in message or "no such file or directory" in message:
            return EXIT_NOT_FOUND
        if "permission denied" in message:
            return EXIT_NOT_EXECUTABLE
    return EXIT_RUNTIME_ERROR


async def _run(plan: Plan) -> Outcome:
    loop = asyncio.get_running_loop()
    config = ContainerConfig(runtime=RuntimeConfig(
        binary=plan.runc, root=os.path.join(RUNC_ROOT, NAMESPACE),
        log_path=os.path.join(plan.bundle, "log.json"),
    ), namespace=NAMESPACE)
    state_dir = runc_state_dir(plan.container_id)
    if _exists(state_dir):
        return Outcome(EXIT_RUNTIME_ERROR, f"container id {plan.container_id} is already in use "
                                           f"(runc state {state_dir} exists)")
    reaper = Reaper()
    container = Container(
        container_id=plan.container_id, bundle=plan.bundle,
        config=config, reaper=reaper, listener=_Listener(),
    )
    forwarder = _SignalForwarder(loop, container)
    forwarder.install()
    reaper.install(loop)
    blocking = {fd: _get_blocking(fd) for fd in (0, 1, 2)}
    created = False
    log_writer: CriLogWriter | None = None
    terminal: TerminalSession | None = None
    try:
        if plan.log_path is not None:
            try:
                log_writer = CriLogWriter(plan.log_path, max_size=plan.log_size_max)
            except OSError as error:
                return Outcome(EXIT_RUNTIME_ERROR,
                               f"--log-path {plan.log_path}: {error.strerror or error}")
        io: ProcessIO
        if plan.terminal:
            stdin = InputSource(os.dup(0)) if _relayable_input(0) else None
            terminal = TerminalSession(loop, plan.container_id, stdin, raw_stdin=stdin is not None)
            io = terminal.io
            await io.prepare()  # the console socket runc sends the pty master to
        else:
            io = _own_stdio(plan.container_id, log_writer)
        try:
            await container.create([], StdioConfig(terminal=plan.terminal), io=io)
        except EngineError as error:
            return Outcome(_create_failure_status(error.message), error.message)
        created = True
        log.debug("container %s: created, init pid %d", container.id, container.init.pid)
        if terminal is not None:
            terminal.begin()
        if forwarder.received:  # interrupted while being created: never start it
            return Outcome(128 + forwarder.received[0])
        try:
            await container.start(container.init)
        except EngineError as error:
            return Outcome(_create_failure_status(error.message), error.message)
        forwarder.mark_started()
        status, _exited_at = await container.init.wait()
        return Outcome(status)
    finally:
        if terminal is not None:
            terminal.end()
        try:
            await _stop_and_delete(container, created, state_dir)
        finally:
            if log_writer is not None:
                try:
                    log_writer.close()
                except OSError as error:
                    log.error("%s", error)
            await forwarder.close()
            reaper.uninstall()
            for fd, was_blocking in blocking.items():
                if was_blocking is not None:
                    with contextlib.suppress(OSError):
                        os.set_blocking(fd, was_blocking)


def runc_state_dir(container_id: str) -> str:
    """Where runc keeps the state of our container `container_id`."""
    return os.path.join(RUNC_ROOT, NAMESPACE, container_id)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _get_blocking(fd: int) -> bool | None:
    try:
        return os.get_blocking(fd)
    except OSError:
        return None


async def _stop_and_delete(container: Container, created: bool, state_dir: str) -> None:
    """Whatever happened: kill the init if it still runs, delete it, release the I/O."""
    init = container.init
    try:
        if created:
            if not init.exited and init.status is not Status.CREATED:
                with contextlib.suppress(EngineError):
                    await init.state.kill(signal.SIGKILL, False)
                with contextlib.suppress(TimeoutError, EngineError):
                    await asyncio.wait_for(init.wait(), KILL_WAIT)
            try:
                await init.state.delete()
            except EngineError as error:
                log.warning("container %s: delete: %s", container.id, error.message)
        if _exists(state_dir):
            # Created by runc but not (fully) deleted, e.g. create failed half-way.
            try:
                await container.runtime.delete(container.id, force=True)
            except OCIRuntimeError as error:
                log.warning("container %s: runc delete --force: %s", container.id,
                            error.message)
    finally:
        await container.close()
