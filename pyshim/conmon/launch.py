"""conmon's start-up after validation, in the process the parent started (spec §4.1 steps
2-5): wait for the start byte, then fork (or hand over to a warm monitor-server) so that this
process can exit 0 once `--conmon-pidfile` holds the monitor's PID.

Lean: podman wait()s for this process, so it imports nothing heavy (`_signal`, not `signal`;
no tempfile, contextlib or dataclasses). The monitor's side is `daemon.py`, imported after the
fork; what the monitor then does is the caller's `monitor(daemon)`.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` imports enum: ~3 ms
import errno
import os

from pyshim.conmon import channels
from pyshim.conmon.channels import ChannelError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pyshim.conmon.daemon import Daemon
    from pyshim.conmon.validate import ConmonConfig

    #: The monitor proper: runs in the daemon, returns its exit status.
    Monitor = Callable[[Daemon], int]

#: conmon's read of the start channel: one read() of up to BUF_SIZE bytes, content ignored.
START_READ_SIZE = 8192


class LaunchError(Exception):
    """A fatal start-up error: exit 1 with `line` on stderr (while stderr is still the
    parent's; afterwards it goes to /dev/null like conmon's)."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("utf-8", "replace").rstrip("\n"))
        self.line = line


def pexit(text: str, code: int) -> LaunchError:
    """conmon's pexit(): the text, then strerror(errno)."""
    return LaunchError(f"[conmon:e]: {text} {os.strerror(code)}\n".encode())


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
            raise pexit("start-pipe read failed", error.errno or errno.EIO) from None
    if keep:
        return fd
    os.close(fd)
    return None


class PidfileError(Exception):
    """Writing `-P` failed: `str()` is GLib's g_file_set_contents message, `errno` the cause."""

    def __init__(self, message: str, errno_value: int) -> None:
        super().__init__(message)
        self.errno = errno_value


_SUFFIX_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def write_pidfile(path: str, pid: int) -> None:
    """The daemon's PID as decimal text, no newline, complete before the name appears (the
    parent reads it as soon as our first process has exited): `<path>.XXXXXX`, then rename,
    as g_file_set_contents does (and with its messages)."""
    while True:
        suffix = "".join(_SUFFIX_LETTERS[byte % 62] for byte in os.urandom(6))
        temporary = f"{path}.{suffix}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as error:
            code = error.errno or errno.EIO
            raise PidfileError(f"Failed to create file \u201c{temporary}\u201d: "
                               f"{os.strerror(code)}", code) from None
    try:
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        try:
            os.rename(temporary, path)
        except OSError as error:
            code = error.errno or errno.EIO
            raise PidfileError(f"Failed to rename file \u201c{temporary}\u201d to "
                               f"\u201c{path}\u201d: g_rename() failed: {os.strerror(code)}",
                               code) from None
    except BaseException:
        try:  # noqa: SIM105 (no contextlib: lean)
            os.unlink(temporary)
        except OSError:
            pass
        raise


def adjust_oom_score(value: str) -> None:
    """Best effort, as conmon: -1000 for the monitor, back to 0 for the runtime child."""
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, value.encode())
    except OSError:
        pass  # lowering it needs CAP_SYS_RESOURCE
    finally:
        os.close(fd)


def open_fds() -> tuple[int, ...]:
    """The fds >= 3 open now (podman's reserved ports, LISTEN_FDS)."""
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    return tuple(sorted(fd for fd in listed if fd >= 3 and is_open(fd)))  # not listdir's own


def is_open(fd: int) -> bool:
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
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _exit_on_sigterm)
    return wait_for_start(environ, keep=config.options.exec_attach)


def launch(config: ConmonConfig, environ: Mapping[str, str], inherited: tuple[int, ...],
           monitor: Monitor, handoff: Callable[[], int | None] | None = None) -> int:
    """Everything after validation, in conmon's order. Without `--sync`, the process the parent
    started exits 0 here (after writing `-P`) and the daemon runs `monitor`; with `--sync`
    this process is the monitor and returns its status. `inherited`: `open_fds()` taken before
    validation opened anything. `handoff`: asks a warm monitor-server to fork the daemon
    instead (its PID, or None and we fork it ourselves)."""
    try:
        start = prepare(config, environ)
    except (LaunchError, ChannelError) as error:
        return _fail(error.line)
    if not config.options.sync:
        handed = handoff() if handoff is not None else None
        if handed is not None:
            _first_process_exit(config, handed)
        pid = os.fork()
        if pid:
            _first_process_exit(config, pid)
    from pyshim.conmon.daemon import become_daemon

    try:
        daemon = become_daemon(config, environ, inherited, start)
    except (LaunchError, ChannelError) as error:
        return _fail(error.line)
    return monitor(daemon)


def _first_process_exit(config: ConmonConfig, daemon_pid: int) -> None:
    """The first process: `-P` gets the daemon's PID, then _exit(0) at once, as conmon does
    (the parent wait()s for us, then reads the file): no interpreter teardown on its path."""
    path = config.options.conmon_pidfile
    if path is not None:
        try:
            write_pidfile(path, daemon_pid)
        except (PidfileError, OSError) as error:
            code = error.errno or errno.EIO
            os._exit(_fail(f"[conmon:e]: Failed to write conmon pidfile: {error} "
                           f"{os.strerror(code)}\n".encode()))
    os._exit(0)


def _fail(line: bytes) -> int:
    try:  # noqa: SIM105 (no contextlib: lean)
        os.write(2, line)
    except OSError:
        pass
    return 1
