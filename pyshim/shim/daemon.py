"""The serving shim daemon: one event loop, the Task service on an already-listening socket.

Entered only through `serve(config, listener)` (after `start` forked, or later from a warm
fork-server). Becomes child subreaper, logs to the bundle's log FIFO without ever blocking or
dying on it, and exits once containerd's Shutdown finds no container left.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import logging
import os
import resource  # noqa: F401  (imported here, in the fork-server: see below)
import signal
import socket
from collections.abc import Callable

import uvloop

from pyshim import durable, environ_table, logfmt
from pyshim.events import Publisher
from pyshim.oom import OOMWatcher
from pyshim.ops import registry
from pyshim.options import InvalidOptions, RuncOptions, decode
from pyshim.protos.containerd.task.v2 import shim_pb2 as task_v2
from pyshim.protos.containerd.task.v3 import shim_pb2 as task_v3
from pyshim.reaper import Reaper
from pyshim.shim.introspect import Introspect
from pyshim.shim.start import RUNTIME_NAME, DaemonConfig, lock_path
from pyshim.task_service import TaskService
from pyshim.ttrpc import Server, bind, method_specs

log = logging.getLogger("pyshim.shim")
# The "pyshim" logger, looked up here, once (getLogger runs logging's manager code), and a
# daemon's usual level, set here, at import (in the fork-server): then the daemon's own
# configure_logging does not call setLevel, which walks every logger of the process and so
# copies their pages into each daemon.
_PYSHIM_LOGGER = logging.getLogger("pyshim")
_PYSHIM_LOGGER.setLevel(logging.INFO)

# What a daemon would otherwise import on first use, each import running importlib's Python
# code in every daemon (~250 KiB of private pages together): `resource` (os.wait4, the
# reaper's, imports it at its first call for its rusage) and the ascii codec (any text file
# opened with encoding="ascii"; bundle.read_pid now decodes bytes, which needs no lookup; the
# lookup is cached for the process).
codecs.lookup("ascii")

#: The Task service's methods (v2, and the same handlers as v3), looked up at import: in the
#: fork-server, once, instead of in every daemon.
TASK_SERVICES = tuple(
    (descriptor.full_name, method_specs(descriptor))
    for descriptor in (task_v2.DESCRIPTOR.services_by_name["Task"],
                       task_v3.DESCRIPTOR.services_by_name["Task"])
)

#: In containerd's environment, "1" makes every daemon answer SIGUSR2 with a dump of its
#: objects (`memdump`, read by `bench/pages.py`). Off by default: SIGUSR2 then kills, as
#: for any process (the tool checks /proc/PID/status SigCgt first).
MEMORY_DUMP_VARIABLE = "PYSHIM_MEMORY_DUMP"
MEMORY_DUMP_SIGNAL = signal.SIGUSR2

# libc's prctl and madvise, looked up here, at import: the fork-server imports this module,
# so every daemon shares these objects instead of building (and importing) its own after the
# fork (python-prctl's import alone cost each daemon ~150 KiB of private pages).
_LIBC = ctypes.CDLL(None, use_errno=True)
_prctl = _LIBC.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_madvise = _LIBC.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
PR_SET_CHILD_SUBREAPER = 36
MADV_DONTNEED = 4
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_ZERO_PAGE = bytes(PAGE_SIZE)


class _NonBlockingStream:
    """stderr (the log FIFO) for logging: a full or reader-less FIFO drops the line instead of
    blocking the loop or killing us (containerd may be down for a while)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dropped = 0

    def set_nonblocking(self) -> None:
        with contextlib.suppress(OSError):
            os.set_blocking(self.fd, False)

    def write(self, text: str) -> int:
        try:
            return os.write(self.fd, text.encode(errors="replace"))
        except OSError:
            self.dropped += 1
            return 0

    def flush(self) -> None:
        pass


class _LogHandler(logging.Handler):
    """A StreamHandler onto _LOG_STREAM whose handle() does it all in one method (filters,
    lock, format, write, error handling): logging's Handler.handle/acquire/emit/format/
    flush/release are as many distinct Python functions, whose pages every daemon would
    copy from the fork-server at its first log line."""

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filters and not self.filter(record):
            return False
        lock = self.lock  # logging's own handler lock (re-initialised in forked children)
        assert lock is not None  # made by Handler.__init__
        try:
            line = _LOG_FORMATTER.format(record) + "\n"
            with lock:
                _LOG_STREAM.write(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        return True


#: The daemon's log handler, stream and formatter, made here, at import (in the fork-server,
#: which never installs them): a daemon only fills in its fields and installs them, instead
#: of each running logging's Handler and Formatter set-up code. fd 2 is the bundle's log FIFO
#: once the daemon has detached (daemonize.detach_stdio).
_LOG_STREAM = _NonBlockingStream(2)
_LOG_FORMATTER = logfmt.LogfmtFormatter()
_LOG_HANDLER = _LogHandler()
_LOG_HANDLER.setFormatter(_LOG_FORMATTER)


def configure_logging(config: DaemonConfig) -> None:
    """What logfmt.configure(non-blocking fd 2, level, fields) does, with the objects above."""
    _LOG_STREAM.set_nonblocking()
    _LOG_FORMATTER.fields.clear()
    _LOG_FORMATTER.fields.update(
        namespace=config.namespace, runtime=RUNTIME_NAME, pid=os.getpid())
    logfmt.install(_LOG_HANDLER, level=logging.DEBUG if config.debug else logging.INFO,
                   root=_PYSHIM_LOGGER)


def become_subreaper() -> None:
    """Container processes whose parent (runc) exits are re-parented to us, so we see them."""
    set_subreaper(True)


def set_subreaper(on: bool) -> None:
    if _prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


def release_zero_pages(obj: object) -> int:
    """Give the kernel back the pages inside `obj` that hold only zeros; returns how many.

    For uvloop's loop: it embeds a 256 KiB receive buffer that its allocation zeroes, so every
    daemon would keep 64 private pages of zeros, of which ttrpc's small reads use one or two.
    Dropping a page that holds only zeros changes nothing a reader can see: a private
    anonymous page (the loop comes from malloc) reads back as zeros, only this thread writes
    the loop, and nothing runs between the check and the madvise. Only pages wholly inside
    the object are considered.
    """
    start = id(obj)
    end = start + type(obj).__basicsize__
    first = -(-start // PAGE_SIZE) * PAGE_SIZE
    released = 0
    for page in range(first, end - PAGE_SIZE + 1, PAGE_SIZE):
        if ctypes.string_at(page, PAGE_SIZE) == _ZERO_PAGE and _madvise(
                page, PAGE_SIZE, MADV_DONTNEED) == 0:
            released += 1
    return released


def serve(config: DaemonConfig, listener: socket.socket) -> int:
    """Serve until the last container is gone and Shutdown was called; returns the exit code."""
    become_subreaper()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # SIGUSR1 asks for a debug dump (installed once the loop runs): never fatal meanwhile.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # SIGINT ends us as it would any daemon until _serve's own handler (a clean shutdown) is
    # installed. Left at Python's default, asyncio.Runner (in uvloop.run) would install its
    # KeyboardInterrupt handler, a partial over the main task, and uvloop's
    # add_signal_handler, replacing it, would format its repr (asyncio's task-repr and
    # inspect code): ~140 KiB of pages copied from the fork-server in every daemon.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    configure_logging(config)
    # uvloop.run's Runner, without Runner.run's per-call set-up (a copied context, the SIGINT
    # handler checks, a wrapper coroutine): code each daemon would run once, copying its pages
    # from the fork-server. Closing is the Runner's own (remaining tasks cancelled, async
    # generators and the default executor shut down, the loop closed).
    with asyncio.Runner(loop_factory=uvloop.Loop) as runner:
        return runner.get_loop().run_until_complete(_serve(config, listener))


async def _serve(config: DaemonConfig, listener: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    release_zero_pages(loop)
    try:
        options = decode(*config.options)
    except InvalidOptions as error:
        log.error("ignoring start options: %s", error)
        options = RuncOptions()
    reaper = Reaper()
    reaper.install(loop)
    # Events that do not fit in memory wait in the bundle (containerd removes it at the end).
    publisher = Publisher(config.ttrpc_address, config.namespace, spool_dir=config.bundle)
    publisher.start()
    oom_watcher = OOMWatcher(loop)
    finished = asyncio.Event()
    remove_socket_files = socket_files_remover(config.socket_path)

    def last_shutdown() -> None:
        # Before Shutdown's reply: containerd runs `delete` once it has it, and the launcher
        # answers that from the bundle alone when our socket is gone (pyshim.shim.delete).
        remove_socket_files()
        finished.set()  # wakes the shutdown below after this turn, so the reply goes first
    service = TaskService(
        namespace=config.namespace,
        publisher=publisher,
        reaper=reaper,
        default_options=options,
        oom_watcher=oom_watcher,
        on_last_shutdown=last_shutdown,
    )
    introspect = Introspect(config, service)
    server = Server([*(bind(specs, service, name) for name, specs in TASK_SERVICES),
                     introspect.service()])
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, finished.set)
    introspect.install_signal(loop)
    if environ_table.get(MEMORY_DUMP_VARIABLE) == "1":
        loop.add_signal_handler(MEMORY_DUMP_SIGNAL, fork_memory_dump)
    await server.start(listener)
    entry = introspect.register()
    log.info("starting signal loop", extra={"fields": {"path": config.bundle}})
    try:
        await finished.wait()
    finally:
        if entry is not None:
            registry.unregister(entry, os.getpid())
    log.info("shutting down", extra={"fields": {"containers": len(service.containers)}})
    introspect.uninstall_signal(loop)
    await server.close()
    remove_socket_files()
    await publisher.close(timeout=5.0)
    await service.close()
    oom_watcher.close()
    reaper.uninstall()
    durable.flush()  # the exit records' fsyncs (the daemon exits with os._exit)
    return 0


def socket_files_remover(socket_path: str) -> Callable[[], None]:
    """Removes our socket and its daemon lock, the first time it is called only: a start may
    bind a new daemon's socket at that path as soon as ours is gone, and that one stays."""
    pending = [socket_path, lock_path(socket_path)]

    def remove() -> None:
        while pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending.pop(0))

    return remove


def fork_memory_dump() -> None:
    """Fork a child that writes `memdump.dump_path(our pid)` and exits (the reaper collects
    it as an unclaimed exit). Here only the fork: the walk and its import are the child's."""
    parent = os.getpid()
    if os.fork() == 0:
        code = 1
        try:
            from pyshim.shim import memdump

            memdump.write_dump(memdump.dump_path(parent))
            code = 0
        finally:
            os._exit(code)
