"""The serving shim daemon: one event loop, the Task service on an already-listening socket.

Entered only through `serve(config, listener)` (after `start` forked, or later from a warm
fork-server). Becomes child subreaper, logs to the bundle's log FIFO without ever blocking or
dying on it, and exits once containerd's Shutdown finds no container left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

import uvloop

from pyshim import logfmt
from pyshim.events import Publisher
from pyshim.oom import OOMWatcher
from pyshim.options import InvalidOptions, RuncOptions, decode
from pyshim.protos.containerd.task.v2 import shim_pb2 as task_v2
from pyshim.protos.containerd.task.v3 import shim_pb2 as task_v3
from pyshim.reaper import Reaper, become_subreaper
from pyshim.shim.start import RUNTIME_NAME, DaemonConfig, lock_path
from pyshim.task_service import TaskService
from pyshim.ttrpc import Server, service_from_descriptor

log = logging.getLogger("pyshim.shim")


class _NonBlockingStream:
    """stderr (the log FIFO) for logging: a full or reader-less FIFO drops the line instead of
    blocking the loop or killing us (containerd may be down for a while)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dropped = 0
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    def write(self, text: str) -> int:
        try:
            return os.write(self.fd, text.encode(errors="replace"))
        except OSError:
            self.dropped += 1
            return 0

    def flush(self) -> None:
        pass


def configure_logging(config: DaemonConfig) -> None:
    logfmt.configure(
        _NonBlockingStream(2),  # type: ignore[arg-type]
        level=logging.DEBUG if config.debug else logging.INFO,
        fields={"namespace": config.namespace, "runtime": RUNTIME_NAME, "pid": os.getpid()},
    )


def serve(config: DaemonConfig, listener: socket.socket) -> int:
    """Serve until the last container is gone and Shutdown was called; returns the exit code."""
    become_subreaper()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    configure_logging(config)
    return uvloop.run(_serve(config, listener))


async def _serve(config: DaemonConfig, listener: socket.socket) -> int:
    loop = asyncio.get_running_loop()
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
    service = TaskService(
        namespace=config.namespace,
        publisher=publisher,
        reaper=reaper,
        default_options=options,
        oom_watcher=oom_watcher,
        on_last_shutdown=finished.set,
    )
    server = Server([
        service_from_descriptor(task_v2.DESCRIPTOR.services_by_name["Task"], service),
        service_from_descriptor(task_v3.DESCRIPTOR.services_by_name["Task"], service),
    ])
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, finished.set)
    await server.start(listener)
    log.info("starting signal loop", extra={"fields": {"path": config.bundle}})
    await finished.wait()
    log.info("shutting down", extra={"fields": {"containers": len(service.containers)}})
    await server.close()
    for path in (config.socket_path, lock_path(config.socket_path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    await publisher.close(timeout=5.0)
    await service.close()
    oom_watcher.close()
    reaper.uninstall()
    return 0
