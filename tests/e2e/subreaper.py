"""Run a command under a child subreaper that reaps every orphan of its process tree.

Usage::

    python tests/e2e/subreaper.py [--parent PID] [--kill-grace SECONDS] -- CMD [ARGS...]

Why: on the test machines PID 1 does not reap orphans, and a containerd shim daemonizes (its
``start`` process exits and the daemon is re-parented to the nearest subreaper, or to PID 1).
Running containerd under this program makes it that nearest subreaper, so shims, and anything
else that gets orphaned below containerd, are re-parented here and reaped when they exit instead
of lingering as zombies. It is a separate process so that pytest itself never becomes a
subreaper (pytest's own ``waitpid`` calls would then race with the orphan reaping).

Behaviour:

* ``prctl(PR_SET_CHILD_SUBREAPER, 1)``, then spawns CMD as its only direct child, with the
  default disposition for SIGPIPE, SIGXFSZ, SIGTERM, SIGINT and SIGHUP (Python ignores SIGPIPE).
* SIGTERM and SIGINT are forwarded to CMD. Once CMD has exited they are forwarded to every
  remaining direct child (the re-parented orphans) instead.
* If its parent process exits (checked twice a second with ``getppid()``, so a killed pytest
  does not leave the tree behind; ``--parent PID`` names the expected parent, which also
  catches a parent that died before this program started), or on SIGHUP: SIGTERM to CMD (or
  to the remaining children), then SIGKILL to every direct child from ``--kill-grace`` seconds
  (default 10) later on, twice a second until none is left.
  (``PR_SET_PDEATHSIG`` is not used: it fires when the parent *thread* exits, which would kill
  a daemon started from a short-lived thread.)
* It reaps with a blocking ``waitpid(-1)`` loop and exits only when it has no child left at all
  (``ECHILD``); a subreaper without children has no living descendants.
* Exit status: CMD's exit code, ``128 + N`` if CMD was killed by signal N, 127 if CMD could not
  be started, 2 on a usage error.

Only the standard library and python-prctl are used, so the file runs as a plain script.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from types import FrameType

import prctl

#: Seconds between the parent's death (or SIGHUP) and SIGKILL for everything left.
HANGUP_GRACE_SECONDS = 10

#: Period of the parent check and of the SIGKILL repetition.
TICK_SECONDS = 0.5

_FORWARDED = (signal.SIGTERM, signal.SIGINT)
_DEFAULT_IN_CHILD = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _State:
    """Mutable state shared between the reaping loop and the signal handlers."""

    parent: int = 0
    grace: float = HANGUP_GRACE_SECONDS
    main_pid: int | None = None
    main_exited: bool = False
    kill_at: float | None = None


def _log(message: str) -> None:
    sys.stderr.write(f"subreaper[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def _direct_children() -> list[int]:
    """PIDs whose parent is this process (read from /proc, including zombies not reaped yet)."""
    me = os.getpid()
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                stat = stat_file.read()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces and parentheses):
        # state ppid ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            children.append(int(entry))
    return children


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _forward(signum: int) -> None:
    """Send ``signum`` to the main child while it lives, else to every remaining child.

    The main child's PID cannot be reused while it is unreaped, and it is only marked exited by
    the reaping loop, so the PID is always the right process here. The same holds for the
    direct children: they stay our children (possibly as zombies) until we reap them.
    """
    if _State.main_pid is not None and not _State.main_exited:
        _send(_State.main_pid, signum)
    else:
        for pid in _direct_children():
            _send(pid, signum)


def _on_forwarded_signal(signum: int, _frame: FrameType | None) -> None:
    _forward(signum)


def _hang_up(reason: str) -> None:
    if _State.kill_at is not None:
        return
    _State.kill_at = time.monotonic() + _State.grace
    _log(f"{reason}: SIGTERM now, SIGKILL in {_State.grace} s")
    _forward(signal.SIGTERM)


def _on_hangup(_signum: int, _frame: FrameType | None) -> None:
    _hang_up("SIGHUP")


def _on_tick(_signum: int, _frame: FrameType | None) -> None:
    """SIGALRM, twice a second: watch for the parent's exit, escalate to SIGKILL when due."""
    if os.getppid() != _State.parent:
        _hang_up(f"parent {_State.parent} exited")
    if _State.kill_at is not None and time.monotonic() >= _State.kill_at:
        for pid in _direct_children():
            _send(pid, signal.SIGKILL)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    _State.parent = os.getppid()
    try:
        while argv and argv[0] != "--":
            option, value, *argv = argv
            if option == "--kill-grace":
                _State.grace = float(value)
            elif option == "--parent":
                _State.parent = int(value)
            else:
                raise ValueError(option)
        if len(argv) < 2:
            raise ValueError("no command")
    except ValueError:
        sys.stderr.write(
            "usage: subreaper.py [--parent PID] [--kill-grace SECONDS] -- CMD [ARGS...]\n"
        )
        return 2
    command = argv[1:]

    prctl.set_child_subreaper(1)

    # Block the signals we handle until the main child's PID is known, so that none of them is
    # lost or handled half-way; the child gets an empty mask and default dispositions.
    handled = {*_FORWARDED, signal.SIGHUP, signal.SIGALRM}
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    for signum in _FORWARDED:
        signal.signal(signum, _on_forwarded_signal)
    signal.signal(signal.SIGHUP, _on_hangup)
    signal.signal(signal.SIGALRM, _on_tick)
    try:
        _State.main_pid = os.posix_spawnp(
            command[0], command, os.environ, setsigmask=(), setsigdef=_DEFAULT_IN_CHILD
        )
    except OSError as error:
        _log(f"cannot run {command[0]!r}: {error}")
        return 127
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    # Interval timers are not inherited by children, so only this process gets the ticks.
    signal.setitimer(signal.ITIMER_REAL, TICK_SECONDS, TICK_SECONDS)

    exit_code = 127
    while True:
        try:
            pid, status = os.waitpid(-1, 0)  # EINTR is retried after the handlers ran (PEP 475)
        except ChildProcessError:
            # Stop the ticks first: during interpreter shutdown SIGALRM is back to its default
            # action and one late tick would kill us, losing the exit status.
            signal.setitimer(signal.ITIMER_REAL, 0)
            return exit_code
        if pid == _State.main_pid:
            _State.main_exited = True
            exit_code = _exit_code(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
