"""What conmon does once the container's main process is gone (spec §11), in its order: final
OOM check, drain and close the logs, close the attach clients, `<persist-dir>/exit` then
`<exit-dir>/<cid>`, the exec exit message, unlink the attach socket, the exit command.

Owns the exit files (atomic, no newline), the `--exit-command` run and the order of the steps;
the pieces it orders (pumps, log drivers, attach server, OOM monitor, sync channel) are passed
in. Never reaps by itself: the engine's Reaper does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from pyshim.bundle import write_atomically
from pyshim.conmon.attach import AttachServer
from pyshim.conmon.logdrivers import LogDrivers
from pyshim.conmon.oom import OomMonitor
from pyshim.reaper import Reaper

log = logging.getLogger("pyshim.conmon")

#: The exit status conmon reports for a --timeout kill (spec §6.4).
TIMED_OUT = -1
#: How long the exit waits for the container's last output to be pumped.
DRAIN_TIMEOUT = 10.0
#: How long attach clients get to take the output queued for them before they are closed.
CLIENT_FLUSH_TIMEOUT = 5.0
#: How long we wait for the exit command (podman's cleanup takes well under a second); after
#: that we exit without it, leaving it running.
EXIT_COMMAND_TIMEOUT = 300.0
EXIT_FILE = "exit"


class ExitFileError(Exception):
    """An exit file could not be written: fatal for the monitor (exit 1); str() is conmon's
    diagnostic line."""


def write_exit_file(path: str, status: int) -> None:
    """The status as decimal text, no newline, atomically (temp file + rename), 0666 minus
    umask: consumers react to the file's creation and parse it at once (spec §11.2)."""
    try:
        write_atomically(path, str(status), 0o666)
    except OSError as error:
        raise ExitFileError(
            f"[conmon:e]: Failed to write {status} to exit file: {error.strerror}: {path}"
        ) from error


def write_exit_files(status: int, *, cid: str, persist_dir: str | None,
                     exit_dir: str | None) -> None:
    """`<persist-dir>/exit` first, then `<exit-dir>/<cid>` (CRI-O wakes on the second and reads
    the first). Raises ExitFileError."""
    if persist_dir:
        write_exit_file(os.path.join(persist_dir, EXIT_FILE), status)
    if exit_dir:
        write_exit_file(os.path.join(exit_dir, cid), status)


def kill_process_group(pid: int) -> None:
    """--timeout expiry (spec §6.4): SIGKILL the process's group, or the pid alone when its
    group is ≤ 1 (or cannot be told)."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if group > 1:
            os.killpg(group, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ExitCommand:
    """`--exit-command` with `--exit-command-arg`s and `--exit-delay` (seconds)."""

    path: str
    args: Sequence[str] = ()
    delay: float = 0


async def run_exit_command(command: ExitCommand, reaper: Reaper, *,
                           timeout: float = EXIT_COMMAND_TIMEOUT) -> int:
    """Sleep the delay, run the command (execv: no PATH search; our environment, cwd and
    /dev/null stdio; no fd but 0-2), wait for it: its exit status. A command that cannot be
    executed counts as status 1, as conmon's child exits 1; one still running after
    `timeout` is left running and counts as 0."""
    if command.delay > 0:
        await asyncio.sleep(command.delay)
    # execv() of a name without a slash runs it from the cwd; spawn would search PATH.
    executable = command.path if "/" in command.path else os.path.join(".", command.path)
    try:
        _, exited = reaper.spawn([executable, *command.args])
    except OSError as error:
        log.warning("[conmon:w]: Failed to exec the exit command %s: %s", command.path, error)
        return 1
    try:
        result = await asyncio.wait_for(exited, timeout)
    except TimeoutError:
        log.warning("[conmon:w]: the exit command %s still runs after %.0f s; not waiting",
                    command.path, timeout)
        return 0
    return result.status


@dataclass
class ExitSteps:
    """The parts of a monitor the exit sequence drives; any may be absent."""

    cid: str
    persist_dir: str | None = None
    exit_dir: str | None = None
    #: Until every output pump has handed its last bytes to the sinks.
    drain: Callable[[], Awaitable[None]] | None = None
    log_drivers: LogDrivers | None = None
    attach: AttachServer | None = None
    oom: OomMonitor | None = None
    #: Step 4: close the fds inherited at start-up (except the sync channel), the ctl FIFOs…
    close_resources: Callable[[], None] | None = None
    #: Step 8 (exec mode): the exit message on the sync channel; EPIPE is the caller's to ignore.
    send_exit_message: Callable[[int], None] | None = None
    exit_command: ExitCommand | None = None
    reaper: Reaper | None = None
    drain_timeout: float = DRAIN_TIMEOUT
    client_flush_timeout: float = CLIENT_FLUSH_TIMEOUT
    exit_command_timeout: float = EXIT_COMMAND_TIMEOUT
    #: What ran, in order (for the monitor's debug log and the tests).
    done: list[str] = field(default_factory=list)


async def conclude(steps: ExitSteps, status: int, *, timed_out: bool = False,
                   container_pid: int | None = None) -> int:
    """Run spec §11.1 for a container (or exec) that exited with `status` (or timed out: the
    status is then -1, nothing is drained, its group is killed). The monitor's exit code
    follows (spec §6.5, §11.4): the exit command's status if non-zero, else the container's
    (& 0xff, as exit() truncates it). Raises ExitFileError (fatal: exit 1)."""
    if steps.oom is not None:  # 1
        steps.oom.final_check()
        steps.done.append("oom check")
    if timed_out:
        status = TIMED_OUT
    elif steps.drain is not None:  # 2
        try:
            await asyncio.wait_for(steps.drain(), steps.drain_timeout)
        except TimeoutError:
            log.warning("[conmon:w]: output not drained after %.0f s", steps.drain_timeout)
        steps.done.append("drain")
    if steps.log_drivers is not None:
        steps.log_drivers.close()
        steps.done.append("logs closed")
    if timed_out and container_pid is not None:  # 3
        kill_process_group(container_pid)
        steps.done.append("killed")
    if steps.oom is not None:
        steps.oom.close()
    if steps.close_resources is not None:  # 4
        steps.close_resources()
    if steps.attach is not None:
        await steps.attach.close(steps.client_flush_timeout)
        steps.done.append("clients closed")
    write_exit_files(status, cid=steps.cid, persist_dir=steps.persist_dir,  # 5, 6
                     exit_dir=steps.exit_dir)
    steps.done.append("exit files")
    if steps.send_exit_message is not None:  # 8
        steps.send_exit_message(status)
        steps.done.append("exit message")
    if steps.attach is not None:  # 9
        steps.attach.unlink()
        steps.done.append("socket unlinked")
    code = status & 0xFF
    if steps.exit_command is not None:  # 10
        if steps.reaper is None:
            raise ValueError("an exit command needs the reaper")
        command_status = await run_exit_command(steps.exit_command, steps.reaper,
                                                timeout=steps.exit_command_timeout)
        steps.done.append("exit command")
        if command_status != 0:
            code = command_status & 0xFF
    return code
