"""The warm fork-server: one per containerd address, with the whole shim already imported; each
`start` gets a daemon forked from it in a millisecond instead of a cold interpreter.

Holds no per-container state and runs no event loop (a child forked from a running loop would
share its epoll): a blocking accept loop. A forked daemon depends on nothing of ours after the
fork: its own session, its own loop, and it outlives us. The kernel reaps our children (SIGCHLD
ignored). A child that finds the request's code stamp differs from ours tells us to exit, so
the next fork-server runs the installed code.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import logging
import marshal
import os
import signal
import socket
import struct
import sys
import time
import types

from pyshim import environ_table
from pyshim.shim import colocate, forkclient
from pyshim.shim import forkserver_files as files
from pyshim.shim.daemonize import become_daemon
from pyshim.shim.start import DaemonConfig

log = logging.getLogger("pyshim.forkserver")

#: Modules the daemon would otherwise import lazily while serving: each one imported after
#: the fork costs every daemon its own private copy.
PRELOAD = (
    "pyshim.shim.daemon",
    "pyshim.shim.info",
    # What the containerd front end's Stats (pyshim.cgroup_metrics) builds; the engine never
    # imports them (the conmon monitor does not need them).
    "google.protobuf.any_pb2",
    "pyshim.protos.cgroups.v1.metrics_pb2",
    "pyshim.protos.cgroups.v2.metrics_pb2",
    "json",
    "tempfile",
    "traceback",
    "urllib.parse",
)
_MAX_REQUEST = 1 << 20
#: Our own fds (lock, listening socket): a child closes them first, or the fork-server's
#: socket and lock would outlive the fork-server in every daemon.
_own_fds: list[int] = []


#: Environment: exit after this many seconds without a request once containerd is gone.
IDLE_VARIABLE = "PYSHIM_FORKSERVER_IDLE_SECONDS"
DEFAULT_IDLE_SECONDS = 600.0
#: At most this long between two checks of "idle and containerd gone".
_CHECK_INTERVAL = 30.0
#: A child that finds the request's code stamp differs from ours sends this: we exit, and a
#: successor (with the installed code) takes over our socket and appends to our log.
HANDOVER_SIGNAL = signal.SIGUSR2


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: forkserver SOCKET [CONTAINERD-ADDRESS]", file=sys.stderr)
        return 2
    path = argv[0]
    address = argv[1] if len(argv) == 2 else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s forkserver[%(process)d] %(levelname)s %(message)s")
    # Records without the caller's file and line, thread or multiprocessing names (documented
    # switches; neither our format nor the daemons' logfmt shows them; nothing of ours asks
    # for stack_info, which this also turns off): each daemon's log lines then run less of
    # logging's Python code (docs/memory.md).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    lock = files.take_lock(path)
    if lock is None:
        return 0  # another fork-server serves this address
    stamp = forkclient.code_stamp()
    files.write_info(lock, files.ForkServerInfo(os.getpid(), address, stamp))
    handover = False
    try:
        for stale in files.remove_stale(os.path.dirname(path), path):
            log.info("removed the files of a dead fork-server: %s.{sock,lock,log}", stale)
        listener = _listen(path)
        _own_fds[:] = [lock, listener.fileno()]
        for module in PRELOAD:
            __import__(module)
        from pyshim.shim import rehearsal  # after PRELOAD: it needs the daemon's modules

        if rehearsal.enabled():
            _rehearse(rehearsal, os.path.dirname(path))
        _argv_area[:] = [argv_area()]
        # Objects that exist now are shared with every child; frozen, no collection ever
        # writes to their pages (which would copy them into each child).
        gc.collect()
        gc.freeze()
        mark_mergeable()
        # The kernel reaps our children: no Python code runs (and touches shared pages) per
        # exit.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        try:
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(HANDOVER_SIGNAL, _hand_over)
            log.info("serving %s (code %s)", path, stamp)
            _serve(listener, stamp, address, _idle_seconds())
        except _Stop as stop:
            handover = stop.handover
        listener.close()
    finally:
        # Still holding the lock: whatever is at our paths is ours.
        files.remove_own(path, keep_log=handover)
    log.info("exiting")
    return 0


class _Stop(Exception):
    def __init__(self, handover: bool = False) -> None:
        super().__init__()
        self.handover = handover


def _rehearse(rehearsal: types.ModuleType, parent: str) -> None:
    """Rehearse a daemon's life here; with colocation on, first a rehearsal that records the
    functions a daemon calls, whose code objects are then copied side by side, and the second
    rehearsal warms the copies (pyshim.shim.colocate)."""
    if colocate.enabled():
        started = time.monotonic()
        codes = colocate.calls_during(lambda: rehearsal.rehearse(parent))
        moved = colocate.relocate(codes)
        log.info("colocated the code of %d of the %d functions a rehearsal called (%.0f ms)",
                 moved, len(codes), (time.monotonic() - started) * 1000)
    rehearsal.rehearse(parent)


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _hand_over(signum: int, frame: object) -> None:
    raise _Stop(handover=True)


def _idle_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(IDLE_VARIABLE, DEFAULT_IDLE_SECONDS)))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def containerd_alive(address: str) -> bool:
    """Whether containerd accepts connections on its gRPC socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(address.removeprefix("unix://"))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # we hold the lock: whatever is there is a dead fork-server's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener


def _serve(listener: socket.socket, stamp: str, address: str, idle: float) -> None:
    """Accept, fork, close: the child reads and checks the request. Every page this loop
    writes after a fork stops being shared with that child, so it does as little as it can.
    Returns once it has been idle for `idle` seconds and its containerd (if known) is gone."""
    listener.settimeout(min(idle, _CHECK_INTERVAL))
    last_request = time.monotonic()
    while True:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            if (address and time.monotonic() - last_request >= idle
                    and not containerd_alive(address)):
                log.info("idle for %.0f s and containerd (%s) is gone", idle, address)
                return
            continue
        except OSError as error:
            if error.errno in (errno.EINTR, errno.ECONNABORTED):
                continue
            raise
        last_request = time.monotonic()
        try:
            if os.fork() == 0:
                _child(connection, stamp)
        finally:
            connection.close()


def _child(connection: socket.socket, stamp: str) -> None:
    """In the forked child: read the request, then become start's daemon, as if start had
    forked it. Never returns."""
    code = 1
    try:
        # Plain try/except, not contextlib.suppress: every distinct Python function a daemon
        # runs copies pages of the fork-server's into it (docs/memory.md).
        for fd in _own_fds:
            try:  # noqa: SIM105 (see above)
                os.close(fd)
            except OSError:
                pass
        for signum in (signal.SIGCHLD, signal.SIGTERM, HANDOVER_SIGNAL):
            signal.signal(signum, signal.SIG_DFL)
        request = _read_request(connection, stamp)
        if request is not None:
            code = _become_daemon(connection, *request)
    except BaseException:
        log.exception("daemon failed to start")
    finally:
        os._exit(code)


def _read_request(
    connection: socket.socket, stamp: str
) -> tuple[DaemonConfig, dict[str, str], int | None, int, int] | None:
    pid, uid, _gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    )
    if uid != os.geteuid():
        log.warning("refused a request from pid %d (uid %d)", pid, uid)
        return None
    connection.settimeout(5.0)
    try:
        data, fds, _flags, _ = socket.recv_fds(connection, _MAX_REQUEST, 2)
    except OSError as error:
        log.warning("bad request from pid %d: %s", pid, error)
        return None
    try:
        request = marshal.loads(data)  # a root peer (checked above) running our Python
        if not isinstance(request, dict):
            raise TypeError("the request is not a dict")
        if request.get("stamp") != stamp:
            log.info("installed code changed (%s → %s): exiting", stamp, request.get("stamp"))
            connection.send(marshal.dumps({"stale": True}))
            os.kill(os.getppid(), HANDOVER_SIGNAL)
            return None
        if len(fds) != 2:
            raise ValueError(f"expected 2 file descriptors, got {len(fds)}")
        config = _config(request["config"])
        environment = {str(k): str(v) for k, v in request["environment"].items()}
        score = request.get("oom_score_adj")
    except (ValueError, KeyError, TypeError, AttributeError, EOFError) as error:
        log.warning("bad request from pid %d: %s", pid, error)
        with contextlib.suppress(OSError):
            connection.send(marshal.dumps({"error": str(error)}))
        return None
    listener_fd, log_fd = fds
    return config, environment, score if isinstance(score, int) else None, listener_fd, log_fd


def _config(fields: dict[str, object]) -> DaemonConfig:
    options = fields["options"]
    if not (isinstance(options, tuple) and len(options) == 2
            and isinstance(options[0], str) and isinstance(options[1], bytes)):
        raise ValueError("options must be (type_url, value)")
    return DaemonConfig(
        namespace=str(fields["namespace"]), id=str(fields["id"]),
        address=str(fields["address"]), ttrpc_address=str(fields["ttrpc_address"]),
        bundle=str(fields["bundle"]), socket_path=str(fields["socket_path"]),
        debug=bool(fields["debug"]), publish_binary=str(fields["publish_binary"]),
        options=options,
    )


def _become_daemon(
    connection: socket.socket,
    config: DaemonConfig,
    environment: dict[str, str],
    score: int | None,
    listener_fd: int,
    log_fd: int,
) -> int:
    # Not os.environ.clear() + update(): see environ_table.
    environ_table.replace(environment)
    os.chdir(config.bundle)
    # What ps shows: the shim it now is, not the fork-server it was.
    set_command_line(f"containerd-shim-pyshim-v1 -namespace {config.namespace} "
                     f"-id {config.id} -address {config.address}")
    listener = socket.socket(fileno=listener_fd)
    with contextlib.suppress(OSError):
        connection.send(marshal.dumps({"pid": os.getpid()}))
    connection.close()
    return become_daemon(config, listener, log_fd, score)


#: madvise(2) advice: let the kernel's same-page merging (KSM) scan these pages.
MADV_MERGEABLE = 12


def mark_mergeable() -> int:
    """Offer our private writable memory to KSM; returns how many bytes were offered.

    Python writes reference counts into every object it touches, so each daemon copies most
    of the pages it uses from us; but idle daemons in the same state write the same values,
    and most of those copies are byte for byte alike across daemons. Where the host runs KSM
    (/sys/kernel/mm/ksm/run = 1), it merges them back. Children inherit the advice with the
    mappings; exec (runc, containers) drops it. Without KSM running this costs nothing.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    offered = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            perms = fields[1]
            if perms[1] != "w" or perms[3] != "p" or (len(fields) > 5 and fields[5] == "[stack]"):
                continue
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if libc.madvise(start, end - start, MADV_MERGEABLE) == 0:
                offered += end - start
    return offered


def argv_area() -> tuple[int, int]:
    """Where our argv is ([start, end) addresses, as /proc/PID/cmdline reads it): fixed for
    the process's life and the same in its forked children."""
    with open("/proc/self/stat", "rb") as stat_file:
        stat = stat_file.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)


#: The fork-server's argv area, read before it forks (see main): a daemon only writes it.
_argv_area: list[tuple[int, int]] = []


def set_command_line(title: str) -> None:
    """Overwrite our argv memory (what /proc/PID/cmdline shows) with `title`, cut to fit.

    The kernel reads the original argv area; writing it in place needs no privilege (unlike
    PR_SET_MM), and our own argv is long enough for a shim's command line. The rest of the
    area is spaces, not NULs, and the last byte is not a NUL: the kernel then shows the title
    up to its NUL (the setproctitle convention) instead of a tail of empty arguments.
    """
    start, end = _argv_area[0] if _argv_area else argv_area()
    size = end - start
    data = title.encode()[: size - 2] + b"\0"
    ctypes.memmove(start, data + b" " * (size - len(data)), size)
