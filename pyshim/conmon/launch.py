"""conmon's start-up after validation (spec §4.1 steps 2-7): wait for the start byte, fork so the
process the parent started can exit 0 once `--conmon-pidfile` holds the daemon's PID, and turn
the daemon into a monitor (own session, child subreaper, stdio on /dev/null, channels taken).

What the monitor then does is the caller's `monitor(daemon)`; here is only the part every
monitor shares, done the way podman and CRI-O observe conmon doing it. With a warm
monitor-server (`server.py`) the fork happens there instead, and this process only hands over.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyshim.conmon import channels
from pyshim.conmon.channels import ChannelError
from pyshim.conmon.validate import ConmonConfig

#: conmon's read of the start channel: one read() of up to BUF_SIZE bytes, content ignored.
START_READ_SIZE = 8192


class LaunchError(Exception):
    """A fatal start-up error: exit 1 with `line` on stderr (while stderr is still the
    parent's; afterwards it goes to /dev/null like conmon's)."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("utf-8", "replace").rstrip("\n"))
        self.line = line


def _pexit(text: str, code: int) -> LaunchError:
    return LaunchError(f"[conmon:e]: {text} {os.strerror(code)}\n".encode())


@dataclass(frozen=True, slots=True)
class Channels:
    """The parent's channels as open fds (CLOEXEC), None where the parent gave none."""

    sync: int | None = None
    #: Kept open only for `--exec-attach`: its second byte releases the runtime child.
    start: int | None = None
    attach: int | None = None


@dataclass(frozen=True, slots=True)
class Daemon:
    """What the monitor starts from: its configuration, channels, and the fds >= 3 that were
    open when the process started (reserved ports: closed right before the exit files)."""

    config: ConmonConfig
    channels: Channels
    inherited_fds: tuple[int, ...]
    #: The caller's stdio, kept for passthrough logging (else 0-2 are /dev/null by now).
    passthrough: bool


def take_channel(environ: Mapping[str, str], name: str) -> int | None:
    """The fd `name` names, made CLOEXEC (neither the runtime nor the exit command inherits
    it), or None if unset."""
    fd = channels.channel_fd(environ, name)
    if fd is None:
        return None
    try:
        os.set_inheritable(fd, False)
    except OSError as error:
        raise channels.cloexec_error(name, error.errno or errno.EBADF) from None
    return fd


def wait_for_start(environ: Mapping[str, str], *, keep: bool) -> int | None:
    """Block until the parent writes the start byte (it first moves us into a cgroup). EOF is
    accepted too. conmon ignores fd 0 here. Returns the fd if `keep` (exec-attach)."""
    fd = take_channel(environ, channels.START_PIPE)
    if fd is None or fd <= 0:
        return None
    while True:
        try:
            os.read(fd, START_READ_SIZE)
            break
        except InterruptedError:
            continue
        except OSError as error:
            raise _pexit("start-pipe read failed", error.errno or errno.EIO) from None
    if keep:
        return fd
    os.close(fd)
    return None


def write_pidfile(path: str, pid: int) -> None:
    """The daemon's PID as decimal text, no newline, complete before the name appears (the
    parent reads it as soon as our first process has exited): temp file + rename."""
    directory = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                                             dir=directory)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())
        os.write(descriptor, str(pid).encode())
        os.close(descriptor)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def adjust_oom_score(value: str) -> None:
    """Best effort, as conmon: -1000 for the monitor, back to 0 for the runtime child."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as score:
        score.write(value)


def open_fds() -> tuple[int, ...]:
    """The fds >= 3 open now (podman's reserved ports, LISTEN_FDS)."""
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    return tuple(sorted(fd for fd in listed if fd >= 3 and _is_open(fd)))  # not listdir's own


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _exit_on_sigterm(signum: int, frame: object) -> None:
    os._exit(1)  # conmon's handle_signal before the forwarding handlers exist: exit 1


def prepare(config: ConmonConfig, environ: Mapping[str, str]) -> int | None:
    """§4.1 steps 2-3, in the process the parent started: up to the start byte. Returns the
    start fd if it is kept (exec-attach)."""
    adjust_oom_score("-1000")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return wait_for_start(environ, keep=config.options.exec_attach)


def become_daemon(config: ConmonConfig, environ: Mapping[str, str], inherited: tuple[int, ...],
                  start: int | None) -> Daemon:
    """§4.1 steps 6-7 in the daemon: take the sync (and attach) channel, leave the caller's
    stdio (unless passthrough logging), own session, child subreaper."""
    inherited = tuple(fd for fd in inherited if _is_open(fd))  # the start channel is closed
    sync = take_channel(environ, channels.SYNC_PIPE)
    attach = None
    if config.options.exec_attach:
        attach = take_channel(environ, channels.ATTACH_PIPE)
        if attach is None:
            raise _pexit("--attach specified but _OCI_ATTACHPIPE was not", errno.ENOENT)
    passthrough = config.log_drivers.passthrough
    if not passthrough:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for target in (0, 1, 2):
            os.dup2(null, target)  # dup2 clears CLOEXEC on the target
        os.close(null)
    with contextlib.suppress(OSError):
        os.setsid()  # EPERM with --sync when the parent made us a group leader: fine
    _set_child_subreaper()
    kept = tuple(fd for fd in inherited if fd not in (sync, attach, start))
    return Daemon(config=config, channels=Channels(sync=sync, start=start, attach=attach),
                  inherited_fds=kept, passthrough=passthrough)


def _set_child_subreaper() -> None:
    import prctl  # the extension module: only the daemon needs it

    try:
        prctl.set_child_subreaper(1)
    except OSError as error:
        raise _pexit("Failed to set as subreaper", error.errno or errno.EPERM) from None


#: The monitor proper: runs in the daemon, returns its exit status.
Monitor = Callable[[Daemon], int]
#: Given the kept start fd: the PID of a daemon started elsewhere, or None.
HandOver = Callable[[int | None], int | None]


def launch(config: ConmonConfig, environ: Mapping[str, str], inherited: tuple[int, ...],
           monitor: Monitor, hand_over: HandOver | None = None) -> int:
    """Everything after validation, in conmon's order. Without `--sync`, the process the parent
    started returns 0 here (after writing `-P`) and the daemon runs `monitor`; with `--sync`
    this process is the monitor and returns its status. `inherited`: `open_fds()` taken before
    validation opened anything. `hand_over(start)`: the PID of a daemon started elsewhere (the
    warm monitor-server) instead of our fork, or None to fork after all."""
    try:
        start = prepare(config, environ)
    except (LaunchError, ChannelError) as error:
        return _fail(error.line)
    if not config.options.sync:
        handed = hand_over(start) if hand_over is not None else None
        if handed is not None:
            return _first_process_exit(config, handed)
        pid = os.fork()
        if pid:
            return _first_process_exit(config, pid)
    try:
        daemon = become_daemon(config, environ, inherited, start)
    except (LaunchError, ChannelError) as error:
        return _fail(error.line)
    return monitor(daemon)


def _first_process_exit(config: ConmonConfig, daemon_pid: int) -> int:
    """The first process: `-P` gets the daemon's PID, then exit 0 (the parent wait()s for us and
    then reads the file)."""
    path = config.options.conmon_pidfile
    if path is not None:
        try:
            write_pidfile(path, daemon_pid)
        except OSError as error:
            return _fail(f"[conmon:e]: Failed to write conmon pidfile: {error.strerror}\n"
                         .encode())
    return 0


def _fail(line: bytes) -> int:
    with contextlib.suppress(OSError):
        os.write(2, line)
    return 1


def write_message(fd: int | None, data: bytes) -> int | None:
    """One message in one write(); EPIPE/ECONNRESET means the parent has gone (podman closes
    the exec sync channel after the PID): the channel is closed, and None returned so the
    caller stops using it. Otherwise returns `fd`."""
    if fd is None:
        return None
    try:
        os.write(fd, data)
    except (BrokenPipeError, ConnectionResetError):
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    return fd


def exit_now(status: int) -> None:
    """Leave the daemon without running interpreter clean-up (it may be a fork of a server)."""
    sys.stdout.flush()
    os._exit(status)
