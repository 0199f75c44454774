"""The warm monitor-server: the whole monitor already imported, so each `pyshim-conmon` launch
gets a monitor forked from it instead of importing the engine in a cold interpreter (issue:
~16 MiB and ~70 ms per container otherwise).

The launched process validates its command line, waits for the start byte, then sends its argv,
environment, cwd, umask, cgroups and fds (0-2, the channels, preserved fds) here
(`server_client.hand_over`). The server forks; the child puts the fds back at their numbers,
takes the environment, cwd, umask and cgroups, validates the same command line again and
replies with its PID. The launched process writes `--conmon-pidfile` and exits 0 (what
conmon's first process does after its fork), and the child becomes the daemon (own session,
subreaper) and runs the monitor. A child depends on nothing of the server's after the fork: it
survives the server's death as it survives podman's exit.

Like the containerd fork-server (pyshim/shim/forkserver.py, whose helpers it reuses): no event
loop, a blocking accept loop, children reaped by the kernel (SIGCHLD ignored), a request from
changed code makes the server exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import marshal
import os
import signal
import socket
import struct
import sys
import time

from pyshim.conmon import server_client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyshim.conmon.validate import ConmonConfig

log = logging.getLogger("pyshim.conmon.server")

#: Everything a monitor imports, loaded once here: a module imported after the fork costs every
#: monitor its own private copy.
PRELOAD = (
    "pyshim.conmon.cli",
    "pyshim.conmon.launch",
    "pyshim.conmon.validate",
    "pyshim.conmon.options",
    "pyshim.conmon.monitor",
    "pyshim.shim.forkserver",
    "uvloop",
    "prctl",
    "json",
    "termios",
    "tempfile",
    "_locale",
    "encodings.ascii",
    "resource",
)
_MAX_REQUEST = 1 << 20
_MAX_FDS = 253
_LOCK_WAIT = 3.0
_own_fds: list[int] = []


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pyshim.conmon.server SOCKET", file=sys.stderr)
        return 2
    path = argv[0]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s conmon-server[%(process)d] %(levelname)s %(message)s")
    lock = _take_lock(path)
    if lock is None:
        return 0  # another server serves this code
    stamp = server_client.code_stamp()
    for module in PRELOAD:
        __import__(module)
    from pyshim.shim.forkserver import mark_mergeable

    listener = _listen(path)
    _own_fds[:] = [lock, listener.fileno()]
    # Objects that exist now are shared with every child; frozen, no collection ever writes
    # to their pages (which would copy them into each child).
    gc.collect()
    gc.freeze()
    mark_mergeable()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    log.info("serving %s (code %s)", path, stamp)
    try:
        _serve(listener, stamp)
    except _Stop:
        pass
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                os.unlink(path)
        listener.close()
    log.info("exiting")
    return 0


def _take_lock(path: str) -> int | None:
    fd = os.open(path[: -len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd  # held for as long as we live
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # we hold the lock: whatever is there is a dead server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    listener.listen(64)
    return listener


def _serve(listener: socket.socket, stamp: str) -> None:
    """Accept, fork, close: the child does the rest, so pages written here after a fork (and
    no longer shared with that child) stay few."""
    while True:
        try:
            connection, _ = listener.accept()
        except InterruptedError:
            continue
        except ConnectionAbortedError:
            continue
        try:
            if os.fork() == 0:
                _child(connection, stamp)
        finally:
            connection.close()


def _child(connection: socket.socket, stamp: str) -> None:
    """In the forked child: become the monitor the request asks for. Never returns."""
    code = 1
    try:
        for fd in _own_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        code = _serve_request(connection, stamp)
    except BaseException:
        log.exception("monitor failed to start")
    finally:
        os._exit(code)


def _serve_request(connection: socket.socket, stamp: str) -> int:
    peer_pid, uid, _gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.geteuid():
        log.warning("refused a request from pid %d (uid %d)", peer_pid, uid)
        return 1
    connection.settimeout(5.0)
    data, received, _flags, _ = socket.recv_fds(connection, _MAX_REQUEST, _MAX_FDS)
    try:
        request = marshal.loads(data)  # a peer of our uid running our Python
        if not isinstance(request, dict):
            raise TypeError("the request is not a dict")
        if request.get("stamp") != stamp:
            log.info("installed code changed: exiting")
            connection.send(marshal.dumps({"stale": True}))
            os.kill(os.getppid(), signal.SIGTERM)
            return 1
        numbers = [int(fd) for fd in request["fds"]]
        if len(numbers) != len(received):
            raise ValueError(f"{len(received)} fds for {len(numbers)} numbers")
        connection = _place_fds(connection, received, numbers)
        # fd 2 is the launched process's stderr now (podman's): the server's log is not ours.
        logging.root.handlers.clear()
        logging.root.addHandler(logging.NullHandler())
        _take_context(request)
        config, inherited = _validate(request, numbers)
    except Exception as error:
        log.warning("bad request from pid %d: %r", peer_pid, error)
        with contextlib.suppress(OSError):
            connection.send(marshal.dumps({"error": str(error)}))
        return 1
    from pyshim.conmon import launch
    from pyshim.conmon.channels import ChannelError
    from pyshim.conmon.monitor import run_monitor
    from pyshim.shim.forkserver import set_command_line

    set_command_line("pyshim-conmon -c " + config.cid)
    launch.adjust_oom_score("-1000")
    signal.signal(signal.SIGTERM, launch._exit_on_sigterm)
    start = request.get("start")
    with contextlib.suppress(OSError):
        connection.send(marshal.dumps({"pid": os.getpid()}))
    connection.close()
    try:
        daemon = launch.become_daemon(config, os.environ, inherited,
                                      start if isinstance(start, int) else None)
    except (launch.LaunchError, ChannelError):
        return 1
    return run_monitor(daemon)


def _place_fds(connection: socket.socket, received: list[int],
               numbers: list[int]) -> socket.socket:
    """Put each received fd at the number it had in the launched process (0-2 included); the
    connection moves out of the way first. Every other fd of ours above 2 is closed."""
    floor = max([*numbers, *received, connection.fileno(), 2]) + 1
    own = connection.detach()
    moved = socket.socket(fileno=fcntl.fcntl(own, fcntl.F_DUPFD_CLOEXEC, floor))
    os.close(own)
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in received]
    for fd in received:
        os.close(fd)
    keep = {moved.fileno(), *high}
    for number in range(3, floor):
        if number not in keep:
            with contextlib.suppress(OSError):
                os.close(number)
    for source, number in zip(high, numbers, strict=True):
        os.dup2(source, number)  # inheritable, as the launched process had it
        os.close(source)
    return moved


def _take_context(request: dict[str, object]) -> None:
    environ = request["environ"]
    if not isinstance(environ, dict):
        raise TypeError("environ is not a dict")
    os.environ.clear()
    os.environ.update({str(key): str(value) for key, value in environ.items()})
    os.chdir(str(request["cwd"]))
    os.umask(int(request["umask"]))  # type: ignore[call-overload]
    _join_cgroups(str(request.get("cgroup", "")))


def _join_cgroups(listing: str) -> None:
    """The launched process's cgroups (podman moved it into `<parent>/conmon` before the start
    byte): best effort, as conmon's own cgroup is the parent's business."""
    pid = str(os.getpid())
    unified = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") \
        else "/sys/fs/cgroup"
    for line in listing.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = unified
        else:
            name = controllers[len("name="):] if controllers.startswith("name=") else controllers
            base = os.path.join("/sys/fs/cgroup", name)
        procs = os.path.join(base, path.lstrip("/"), "cgroup.procs")
        try:
            with open(procs, "w", encoding="ascii") as target:
                target.write(pid)
        except OSError as error:
            log.debug("joining %s: %s", procs, error)


def _validate(request: dict[str, object],
              numbers: list[int]) -> tuple[ConmonConfig, tuple[int, ...]]:
    """The launched process's command line, validated here again (the same answer: the same
    argv, environment and cwd); the fds >= 3 it had are the monitor's inherited ones."""
    from pyshim.conmon import args, cli, validate
    from pyshim.conmon.options import ConmonOptions

    argv = request["argv"]
    if not isinstance(argv, list) or not all(isinstance(word, bytes) for word in argv):
        raise TypeError("argv is not a list of bytes")
    values = args.parse(argv, cli.locale_codeset)
    config = validate.validate(ConmonOptions.from_values(values), validate.RealHost(),
                               os.environ)
    return config, tuple(fd for fd in numbers if fd >= 3)
