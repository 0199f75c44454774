"""The daemon's operator side: the Introspect ttrpc service (Describe, Debug), the debug signal
(SIGUSR1: stacks into the log, without stopping anything) and the shim registry entry.

Reads the Task service's state and never changes it. Nothing here blocks the loop: the dump is
built on the loop (bounded) and written to the log FIFO by a non-blocking writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import time
from typing import Any

from pyshim import __version__
from pyshim.ops import registry
from pyshim.process import Process
from pyshim.protos.pyshim.introspect.v1 import introspect_pb2
from pyshim.shim import stacks
from pyshim.shim.start import DaemonConfig
from pyshim.task_service import TaskService
from pyshim.ttrpc import CallContext, Service, bind, method_specs

log = logging.getLogger("pyshim.introspect")

DEBUG_SIGNAL = signal.SIGUSR1
#: Where the daemon's log goes (the bundle's `log` FIFO, see daemonize.detach_stdio).
LOG_FD = 2

_SERVICE = introspect_pb2.DESCRIPTOR.services_by_name["Introspect"]
#: The service's methods, looked up at import (in the fork-server, once): a daemon only binds
#: them, instead of each running the descriptor walk, message-class lookups and snake_case.
INTROSPECT_METHODS = (_SERVICE.full_name, method_specs(_SERVICE))


class Introspect:
    """pyshim.introspect.v1.Introspect over one daemon's TaskService."""

    def __init__(self, config: DaemonConfig, tasks: TaskService) -> None:
        self.config = config
        self.tasks = tasks
        self.started_at_ns = time.time_ns()
        self._dumps: set[asyncio.Task[bool]] = set()

    def service(self) -> Service:
        name, specs = INTROSPECT_METHODS
        return bind(specs, self, name)

    # ------------------------------------------------------------------------ Describe

    async def describe(self, request: Any, context: CallContext) -> introspect_pb2.DescribeResponse:
        return self.snapshot()

    def snapshot(self) -> introspect_pb2.DescribeResponse:
        config = self.config
        response = introspect_pb2.DescribeResponse(shim=introspect_pb2.Shim(
            pid=os.getpid(), namespace=config.namespace, id=config.id, address=config.address,
            ttrpc_address=config.ttrpc_address, socket="unix://" + config.socket_path,
            bundle=config.bundle, version=__version__, started_at_ns=self.started_at_ns,
            parent_pid=os.getppid(),
        ))
        for container in list(self.tasks.containers.values()):
            entry = response.containers.add(id=container.id, bundle=container.bundle)
            for process in [container.init, *list(container.execs.values())]:
                entry.processes.append(_process(process))
        return response

    # --------------------------------------------------------------------------- Debug

    async def debug(self, request: Any, context: CallContext) -> introspect_pb2.DebugResponse:
        text = stacks.dump(f"requested over Introspect (peer pid {context.peer_pid})")
        self._write_to_log(text)
        return introspect_pb2.DebugResponse(dump=text)

    def on_debug_signal(self) -> None:
        """SIGUSR1, on the loop: the dump goes to the log only."""
        self._write_to_log(stacks.dump(f"on {DEBUG_SIGNAL.name}"))

    def _write_to_log(self, text: str) -> None:
        log.info("debug dump of %d bytes follows", len(text))
        task = asyncio.get_running_loop().create_task(
            stacks.write_nonblocking(LOG_FD, text.encode(errors="replace")),
            name="write debug dump")
        self._dumps.add(task)
        task.add_done_callback(self._dumps.discard)

    def install_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGUSR1 dumps the tasks on the loop; and, from the C signal handler, the threads'
        Python stacks at once: that part appears even when the loop itself is stuck."""
        loop.add_signal_handler(DEBUG_SIGNAL, self.on_debug_signal)
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            # chain=True: the loop's own handler (installed just above) still runs.
            faulthandler.register(DEBUG_SIGNAL, file=LOG_FD, all_threads=True, chain=True)

    def uninstall_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            faulthandler.unregister(DEBUG_SIGNAL)
        loop.remove_signal_handler(DEBUG_SIGNAL)
        # Not back to the default (terminate): a late `pyshim debug` must not kill a shim
        # that is finishing its shutdown.
        signal.signal(DEBUG_SIGNAL, signal.SIG_IGN)

    # ------------------------------------------------------------------------ registry

    def register(self) -> str | None:
        """Our registry entry (see pyshim.ops.registry); None if it cannot be written."""
        config = self.config
        try:
            return registry.register(registry.ShimEntry(
                pid=os.getpid(), socket="unix://" + config.socket_path,
                namespace=config.namespace, id=config.id, address=config.address,
                bundle=config.bundle, started_at_ns=self.started_at_ns,
            ))
        except OSError as error:
            log.warning("cannot register in %s: %s", registry.registry_dir(), error)
            return None


def _process(process: Process) -> introspect_pb2.Process:
    return introspect_pb2.Process(
        id=process.id, init=process.is_init, pid=process.pid, status=process.status.value,
        exited=process.exited, exit_status=process.exit_status,
        exited_at_ns=process.exited_at_ns or 0, terminal=process.stdio.terminal,
        stdin=process.stdio.stdin, stdout=process.stdio.stdout, stderr=process.stdio.stderr,
        oom_killed=process.is_init and process.container.oom_killed,
    )
