"""The one place that reaps children: child subreaper, SIGCHLD-driven wait4(-1) loop.

Every exit (runc commands, container inits re-parented to us, exec processes, orphans) is
collected here and routed by pid. Nothing else in the daemon may call wait()/waitpid(): a
second reaper would steal exits (and subprocess reports 0 for a stolen one).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pyshim.reaper")

# Exits of pids nobody claimed yet are kept this long (a process may exit before runc has told
# us its pid) and at most this many (orphaned grandchildren are reaped and never claimed).
UNCLAIMED_TTL = 120.0
UNCLAIMED_MAX = 4096


@dataclass(frozen=True, slots=True)
class Exit:
    """A reaped child: its pid, exit status as containerd reports it, and when it was reaped."""

    pid: int
    status: int
    # Wall clock (time.time_ns()) for exited_at, monotonic sequence for "since" matching.
    time_ns: int
    sequence: int


def exit_status(wait_status: int) -> int:
    """wait4() status → containerd's exit status: the code, or 128 + signal number."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    return 255


def become_subreaper() -> None:
    """Container processes whose parent (runc) exits are re-parented to us, so we see them."""
    import prctl

    prctl.set_child_subreaper(1)


class Reaper:
    """Routes every reaped exit to whoever waits for that pid, or remembers it briefly."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, list[asyncio.Future[Exit]]] = {}
        # Called synchronously at reap time, before any waiter runs (exit records on disk).
        self._recorders: dict[int, Callable[[Exit], None]] = {}
        self._unclaimed: OrderedDict[int, Exit] = OrderedDict()
        self._sequence = 0
        self._previous: Any = None

    # -------------------------------------------------------------------------- lifecycle

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reaping on SIGCHLD (and once now, for children that exited before)."""
        self._loop = loop
        # uvloop reserves add_signal_handler(SIGCHLD) for its own child watcher (which we never
        # use), so a plain Python handler schedules the reaping; the loop's wakeup fd makes
        # it run promptly. The handler only queues: reaping happens in a loop callback.
        self._previous = signal.signal(
            signal.SIGCHLD, lambda _signum, _frame: loop.call_soon_threadsafe(self.reap)
        )
        self.reap()

    def uninstall(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGCHLD, self._previous or signal.SIG_DFL)

    @property
    def sequence(self) -> int:
        """Mark for `wait(pid, since=...)`: exits reaped after this call have a larger one."""
        return self._sequence

    # ---------------------------------------------------------------------------- reaping

    def reap(self) -> None:
        while True:
            try:
                pid, status, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self._sequence += 1
            self._deliver(Exit(pid, exit_status(status), time.time_ns(), self._sequence))

    def _deliver(self, exited: Exit) -> None:
        recorder = self._recorders.pop(exited.pid, None)
        if recorder is not None:
            _record(recorder, exited)
        waiters = self._waiters.pop(exited.pid, None)
        if waiters:
            for future in waiters:
                if not future.done():
                    future.set_result(exited)
            return
        self._unclaimed[exited.pid] = exited
        self._unclaimed.move_to_end(exited.pid)
        self._expire()

    def _expire(self) -> None:
        horizon = time.time_ns() - int(UNCLAIMED_TTL * 1e9)
        while self._unclaimed:
            oldest = next(iter(self._unclaimed.values()))
            if len(self._unclaimed) <= UNCLAIMED_MAX and oldest.time_ns >= horizon:
                break
            self._unclaimed.popitem(last=False)

    # ----------------------------------------------------------------------------- waiting

    def watch(
        self,
        pid: int,
        *,
        since: int | None = None,
        on_exit: Callable[[Exit], None] | None = None,
    ) -> asyncio.Future[Exit]:
        """A future resolved with pid's exit.

        `since` (a `sequence` read before the pid could have exited) lets an exit that was
        reaped before we knew the pid count too; an older unclaimed exit of the same pid
        belongs to an earlier process and is ignored. `on_exit` runs synchronously in the
        reaping callback itself (or now, for an early exit): nothing can come between the
        reap and it, not even a loop turn.
        """
        assert self._loop is not None, "Reaper.install() first"
        future: asyncio.Future[Exit] = self._loop.create_future()
        early = self._unclaimed.get(pid)
        if early is not None and since is not None and early.sequence > since:
            del self._unclaimed[pid]
            if on_exit is not None:
                _record(on_exit, early)
            future.set_result(early)
            return future
        if on_exit is not None:
            self._recorders[pid] = on_exit
        self._waiters.setdefault(pid, []).append(future)
        return future

    def forget(self, pid: int, future: asyncio.Future[Exit]) -> None:
        self._recorders.pop(pid, None)
        waiters = self._waiters.get(pid)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[pid]

    # ---------------------------------------------------------------------------- spawning

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        pass_fds: Sequence[int] = (),
        fd_map: Mapping[int, int] | None = None,
        new_session: bool = False,
        new_process_group: bool = False,
    ) -> tuple[int, asyncio.Future[Exit]]:
        """Start argv[0] (a path, or a name looked up in env's PATH) and watch its exit.

        The pid is registered before the event loop can run the reaper, so no exit is missed.
        Unset stdio fds become /dev/null. `fd_map` gives the child extra fds at chosen numbers
        ({child fd: our fd}, e.g. a logging binary's 3, 4 and 5). Signal dispositions we
        changed (SIGPIPE ignored) are reset in the child.
        """
        executable = _resolve(argv[0], env)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        # Copies above every target first, so one dup2 never overwrites a later source.
        floor = max([10, *(fd_map or {})]) + 1
        mapped = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
                  for target, fd in (fd_map or {}).items()}
        try:
            actions: list[tuple[int, ...]] = [
                (os.POSIX_SPAWN_DUP2, devnull if stdin is None else stdin, 0),
                (os.POSIX_SPAWN_DUP2, devnull if stdout is None else stdout, 1),
                (os.POSIX_SPAWN_DUP2, devnull if stderr is None else stderr, 2),
            ]
            # dup2 clears FD_CLOEXEC on the copy; extra fds keep their own number.
            actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in pass_fds]
            actions += [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in mapped.items()]
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            before_cwd = None
            if cwd is not None:
                # posix_spawn has no chdir action before 3.13's; this is the loop thread, so a
                # brief chdir around the call is safe.
                before_cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
                os.chdir(cwd)
            defaults = (signal.SIGPIPE, signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)
            environment = dict(os.environ if env is None else env)
            try:
                if new_process_group and not new_session:
                    pid = os.posix_spawn(
                        executable, list(argv), environment, file_actions=actions,
                        setpgroup=0, setsigdef=defaults, setsigmask=(),
                    )
                else:
                    pid = os.posix_spawn(
                        executable, list(argv), environment, file_actions=actions,
                        setsid=new_session, setsigdef=defaults, setsigmask=(),
                    )
            finally:
                if before_cwd is not None:
                    os.fchdir(before_cwd)
                    os.close(before_cwd)
        finally:
            os.close(devnull)
            for fd in mapped.values():
                os.close(fd)
        return pid, self.watch(pid)


def _record(recorder: Callable[[Exit], None], exited: Exit) -> None:
    # A failing recorder must not stop the reaping loop (other exits wait behind it).
    try:
        recorder(exited)
    except Exception:
        log.exception("recording the exit of pid %d failed", exited.pid)


def _resolve(program: str, env: Mapping[str, str] | None) -> str:
    if "/" in program:
        return program
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f'executable file "{program}" not found in $PATH ({path})')


#: For a command started elsewhere (process/oneshot.py's child), found as spawn finds it.
resolve_executable = _resolve
