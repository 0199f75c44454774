"""The warm monitor-server: the conmon front end (and what a monitor imports) loaded once; each
launched `pyshim-conmon` hands it its fds, environment and command line (`handoff.py`) and gets
back the PID of a monitor forked from here, instead of a cold interpreter per container.

The forked child becomes the launched process's double: the same fd table (same numbers and
close-on-exec flags: `--preserve-fds` counts on fds 3..), environment, cwd, umask, cgroups,
oom_score_adj and resource limits; then conmon's daemon start-up (`daemon.become_daemon`: own
session, subreaper) and the monitor. It depends on nothing of ours after the fork: it survives
this server's death and the launcher's exit. Blocking accept loop, no event loop (a child
forked from a running loop would share its epoll); the kernel reaps our children.

What the launcher keeps paying: its interpreter start and the lean front-end imports (the
command line is validated there, so errors reach the parent's stderr before the start byte);
what it saves: the monitor's imports (asyncio, uvloop, the engine) and their private copies.
Not handed over: `--sync` (CRI-O's ExecSync: the started process must be the monitor), peers of
another uid or namespace, launchers holding more than 253 fds; they fork as conmon does. The
launcher's LSM label is not copied (the server runs with the label of the launcher that started
it); raising a resource limit above the server's needs CAP_SYS_RESOURCE, so a server started by
one launcher gives later monitors at most its own limits.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import importlib
import logging
import marshal
import os
import resource
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyshim import cgroups
from pyshim.conmon import args, channels, cli, handoff, validate
from pyshim.conmon.daemon import Daemon, become_daemon
from pyshim.conmon.options import ConmonOptions
from pyshim.shim.forkserver import mark_mergeable, set_command_line

log = logging.getLogger("pyshim.conmon.server")

#: What a monitor on pyshim's engine imports: each one imported after the fork would be a
#: private copy in every monitor (and its import time on the container's critical path).
PRELOAD = ("json", "prctl", "tempfile", "pyshim.conmon.runtime_argv", "asyncio", "uvloop",
           "pyshim.reaper", "pyshim.process", "pyshim.io.pipes", "pyshim.io.terminal",
           "pyshim.logs", "pyshim.runtime")
#: Namespaces the launcher must share with us: its paths, pids and cgroups must mean ours.
SHARED_NAMESPACES = ("mnt", "pid", "user", "cgroup", "ipc", "uts", "net")
#: Most fds one request may carry (podman's preserved fds and reserved ports included).
MAX_FDS = handoff.MAX_FDS
_own_fds: list[int] = []
_monitor: list[Callable[[Daemon], int]] = [cli.run_monitor]


def main(argv: list[str]) -> int:
    """SOCKET [MODULE:FUNCTION]: the monitor to run (default pyshim.conmon.cli:run_monitor;
    tests name a probe)."""
    if len(argv) not in (1, 2):
        print("usage: python -m pyshim.conmon.server SOCKET [MODULE:FUNCTION]", file=sys.stderr)
        return 2
    path = argv[0]
    if len(argv) == 2:
        module, _, function = argv[1].partition(":")
        _monitor[:] = [getattr(importlib.import_module(module), function)]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s conmon-server[%(process)d] %(levelname)s %(message)s")
    lock = _take_lock(path)
    if lock is None:
        return 0  # another server listens there
    listener = _listen(path)
    bound = os.stat(path).st_ino  # (a socket fd's fstat is sockfs', not the file's)
    _own_fds[:] = [lock, listener.fileno()]
    stamp = handoff.code_stamp()
    for module in PRELOAD:
        try:
            __import__(module)
        except ImportError as error:  # the engine's layout may move: a cold import then
            log.warning("preload %s: %s", module, error)
    gc.collect()
    gc.freeze()  # what exists now stays shared with every monitor: no collection writes it
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
            if os.stat(path).st_ino == bound:  # not a successor's
                os.unlink(path)
        listener.close()
    log.info("exiting")
    return 0


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _take_lock(path: str, wait: float = 3.0) -> int | None:
    fd = os.open(path.removesuffix(".sock") + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())  # who holds it: tests stop us by this PID
        return fd


def _listen(path: str) -> socket.socket:
    """Listening before the name appears (bound under a temporary name, then renamed): a
    launcher that finds the socket never gets ECONNREFUSED from a server still starting."""
    temporary = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_mask = os.umask(0o177)
    try:
        listener.bind(temporary)
    finally:
        os.umask(old_mask)
    listener.listen(64)
    os.rename(temporary, path)  # we hold the lock: whatever is there is a dead server's
    return listener


def _serve(listener: socket.socket, stamp: str) -> None:
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
    """In the forked child: become the launcher's monitor. Never returns."""
    code = 1
    try:
        for fd in _own_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        code = _become_monitor(connection, stamp)
    except BaseException:
        log.exception("monitor failed to start")
    finally:
        os._exit(code)


def _become_monitor(connection: socket.socket, stamp: str) -> int:
    peer, uid, _gid = struct.unpack("3i", connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != os.geteuid() or not _same_namespaces(peer):
        log.warning("refused pid %d (uid %d or its namespaces differ): it forks itself", peer,
                    uid)
        return 1
    connection.settimeout(handoff.REPLY_TIMEOUT)
    data, fds, _flags, _ = socket.recv_fds(connection, handoff.MAX_REQUEST, MAX_FDS)
    request = marshal.loads(data)  # a root peer (checked above) running our Python
    if request.get("stamp") != stamp:
        log.info("launcher runs other code (%s, ours %s): exiting", request.get("stamp"), stamp)
        with contextlib.suppress(OSError):
            connection.send(marshal.dumps({"stale": True}))
        os.kill(os.getppid(), signal.SIGTERM)
        return 0
    table = [(int(fd), bool(cloexec)) for fd, cloexec in request["fds"]]
    if len(fds) != len(table):
        raise ValueError(f"{len(fds)} fds for a table of {len(table)}")
    # The launcher may exit now (podman waits for it): all we need of it is here, its /proc
    # facts included. Its "go" says it did not give up on us meanwhile (it would have forked
    # a monitor of its own).
    try:
        connection.send(marshal.dumps({"pid": os.getpid()}))
        go = connection.recv(len(handoff.GO))
    except OSError:
        go = b""
    if go != handoff.GO:
        log.warning("launcher %d gave up on monitor %d: leaving", peer, os.getpid())
        return 0
    log.info("monitor %d for launcher %d", os.getpid(), peer)  # stderr is still our log
    connection = _install_fds(fds, table, connection)
    connection.close()
    resources = _resources(request["proc"])
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update({str(key): str(value) for key, value in request["environ"].items()})
    _apply_resources(resources)  # before any runtime is forked: it inherits our cgroups
    argv = [bytes(word) for word in request["argv"]]
    set_command_line(b" ".join([b"pyshim-conmon", *argv]).decode("utf-8", "replace"))
    config = validate.validate(
        ConmonOptions.from_values(args.parse(argv, cli.locale_codeset)),
        _HandedHost(request.get("k8s_log_fd")), os.environ)
    start = channels.channel_fd(os.environ, channels.START_PIPE)
    kept_start = start if config.options.exec_attach and start is not None and start > 0 else None
    inherited = tuple(int(fd) for fd in request["inherited"])
    daemon = become_daemon(config, os.environ, inherited, kept_start)
    return _monitor[0](daemon)


def _same_namespaces(pid: int) -> bool:
    try:
        return all(os.stat(f"/proc/{pid}/ns/{name}").st_ino
                   == os.stat(f"/proc/self/ns/{name}").st_ino for name in SHARED_NAMESPACES)
    except OSError:
        return False


def _install_fds(received: list[int], table: list[tuple[int, bool]],
                 connection: socket.socket) -> socket.socket:
    """Make our fd table the launcher's: each received fd at its number there, with its
    close-on-exec flag; everything else of ours closed but the connection (moved above)."""
    above = max([fd for fd, _ in table] + received + [connection.fileno()]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for fd in received]
    timeout = connection.gettimeout()
    connection = socket.socket(fileno=fcntl.fcntl(connection.detach(), fcntl.F_DUPFD_CLOEXEC,
                                                  above))
    connection.settimeout(timeout)  # the fd is O_NONBLOCK (a timeout socket's): say so again
    keep = {*moved, connection.fileno()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    for source, (target, cloexec) in zip(moved, table, strict=True):
        os.dup2(source, target, inheritable=not cloexec)
        os.close(source)
    return connection


@dataclass(frozen=True, slots=True)
class _Resources:
    """What the monitor copies from the launcher (which sent its own /proc texts: it may be
    gone by the time we apply them)."""

    cgroup_directories: tuple[str, ...]
    oom_score_adj: str | None
    limits: tuple[tuple[int, tuple[int, int]], ...]


def _resources(proc: dict[str, str]) -> _Resources:
    directories: list[str] = []
    text = proc.get("cgroup", "")
    try:
        mode = cgroups.host_mode()
        mounts = None
        if mode is cgroups.CgroupMode.V1:
            with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
                mounts = cgroups.parse_mountinfo_v1(mountinfo.read())
        group = cgroups.parse_proc_cgroup(text, mode, mounts=mounts)
        directories = [group.path] if mode is cgroups.CgroupMode.V2 else list(
            group.paths.values())
        unified = [line[3:].strip() for line in text.splitlines() if line.startswith("0::")]
        if mode is cgroups.CgroupMode.V1 and unified and os.path.isdir(
                "/sys/fs/cgroup/unified"):
            directories.append(os.path.join("/sys/fs/cgroup/unified", unified[0].lstrip("/")))
    except (OSError, cgroups.CgroupNotFound) as error:
        log.warning("could not place the launcher's cgroups: %s", error)
    score = proc.get("oom_score_adj", "").strip() or None
    return _Resources(tuple(dict.fromkeys(directories)), score,
                      parse_limits(proc.get("limits", "")))


#: /proc/<pid>/limits' names, in Linux's RLIMIT_* order (0 = CPU … 15 = RTTIME; Python's
#: resource module lacks RLIMIT_LOCKS, 10).
_LIMIT_NAMES = ("Max cpu time", "Max file size", "Max data size", "Max stack size",
                "Max core file size", "Max resident set", "Max processes", "Max open files",
                "Max locked memory", "Max address space", "Max file locks",
                "Max pending signals", "Max msgqueue size", "Max nice priority",
                "Max realtime priority", "Max realtime timeout")


def parse_limits(text: str) -> tuple[tuple[int, tuple[int, int]], ...]:
    """(resource, (soft, hard)) from the text of /proc/<pid>/limits (fixed columns: name 26,
    soft and hard 21 each; `unlimited` is RLIM_INFINITY)."""
    limits = []
    for line in text.splitlines()[1:]:
        name = line[:26].strip()
        if name not in _LIMIT_NAMES:
            continue
        soft, hard = (resource.RLIM_INFINITY if value == "unlimited" else int(value)
                      for value in (line[26:47].strip(), line[47:68].strip()))
        limits.append((_LIMIT_NAMES.index(name), (soft, hard)))
    return tuple(limits)


def _apply_resources(resources: _Resources) -> None:
    """The launcher's cgroups (its parent placed it there before the start byte; the runtime
    and the container inherit ours), oom_score_adj and resource limits: best effort, like
    conmon's own attempts, but logged."""
    for directory in resources.cgroup_directories:
        try:
            with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except OSError as error:
            log.warning("could not join cgroup %s: %s", directory, error)
    if resources.oom_score_adj is not None:
        try:
            with open("/proc/self/oom_score_adj", "w") as target:
                target.write(resources.oom_score_adj)
        except OSError as error:
            log.warning("could not set oom_score_adj %s: %s", resources.oom_score_adj, error)
    for limit, values in resources.limits:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(limit, values)


class _HandedHost(validate.RealHost):
    """The launcher validated the command line already (the same checks pass again here); its
    opened k8s-file came with the fds and is reused instead of opened twice."""

    def __init__(self, k8s_log_fd: int | None) -> None:
        self._k8s_log_fd = k8s_log_fd

    def open_k8s_log(self, path: str) -> int:
        if self._k8s_log_fd is not None:
            return self._k8s_log_fd
        return super().open_k8s_log(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
