"""The conmon-compatible monitor proper: what the daemon does after `launch` (spec §4.1 steps
8-17, §6, §11, §12).

It wires the engine (a Container whose runtime line, files and stdio are conmon's) to the
conmon blocks: log drivers, the attach socket, the ctl/winsz FIFOs, the OOM marker and the exit
sequence. Create/restore: `runtime create` (podman runs `runtime start` itself), the PID on the
sync channel, then wait for the container's exit. Exec (`-e`): an adopted container, `runtime
exec --detach` with the process JSON the parent wrote, the PID and then the exit status on the
sync channel. Engine errors become conmon's sync messages and exit status 1 here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import NoReturn

from pyshim import errors
from pyshim.conmon import channels
from pyshim.conmon.attach import AttachError, AttachServer
from pyshim.conmon.ctl import ControlFifos, WindowSizer
from pyshim.conmon.daemon import Daemon, write_message
from pyshim.conmon.exits import ExitCommand, ExitFileError, ExitSteps, conclude
from pyshim.conmon.launch import adjust_oom_score
from pyshim.conmon.logdrivers import LogConfig, LogDriverError, LogDrivers, open_log_drivers
from pyshim.conmon.monitor_io import MonitorIO
from pyshim.conmon.oom import OomMonitor
from pyshim.conmon.validate import ConmonConfig, Mode
from pyshim.io import StdioConfig
from pyshim.io.fanin import StdinWriter
from pyshim.io.fanout import Fanout
from pyshim.process import Container, ContainerConfig, ExitRecord, Process
from pyshim.reaper import Reaper
from pyshim.runtime import RuntimeConfig

log = logging.getLogger("pyshim.conmon")

#: Where the monitor's own diagnostics go (its stderr is /dev/null, as conmon's).
DEBUG_LOG_VARIABLE = "PYSHIM_CONMON_DEBUG_LOG"
#: Signals forwarded to the container (spec §6.3).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: The id the engine knows an exec session by when `-u` is absent (legacy exec).
DEFAULT_EXEC_ID = "exec"


class MonitorFailed(Exception):
    """Start-up failed after the fork: the parent was told (or sees EOF); exit 1."""


class ConmonFiles:
    """ContainerFiles of a conmon monitor: the runtime writes `-p`, the process JSON is the
    parent's `--exec-process-spec`, and exits are recorded by the exit sequence, not here."""

    def __init__(self, config: ConmonConfig) -> None:
        self.config = config

    def pid_file(self, exec_id: str | None) -> str:
        return self.config.container_pidfile

    def exec_spec_file(self, exec_id: str) -> str:
        assert self.config.options.exec_process_spec is not None
        return self.config.options.exec_process_spec

    def spool_dir(self, exec_id: str | None) -> str | None:
        return None

    def record_exit(self, exec_id: str | None, record: ExitRecord) -> None:
        pass

    def created(self, init_pid: int) -> None:
        pass

    def forget_exec(self, exec_id: str) -> None:
        pass


class _Quiet:
    """The engine's Listener: the monitor reports through its own channels instead."""

    def process_started(self, process: Process) -> None:
        pass

    def process_exited(self, process: Process) -> None:
        pass

    def container_oom(self, container: Container) -> None:
        pass


def runtime_config(config: ConmonConfig) -> RuntimeConfig:
    """conmon's runtime line as the engine's RuntimeConfig (spec §5.1): `--runtime-arg`s are
    global args, `--runtime-opt`s command args; podman's `--log` among them is where the
    runtime's JSON errors are read from."""
    options = config.options
    return RuntimeConfig(
        binary=config.runtime,
        systemd_cgroup=options.systemd_cgroup and config.mode is not Mode.EXEC,
        global_args=options.runtime_args, command_args=options.runtime_opts,
        no_pivot=options.no_pivot, no_new_keyring=options.no_new_keyring,
        error_log=_runtime_log(options.runtime_args),
    )


def _runtime_log(args: tuple[str, ...]) -> str | None:
    for index, arg in enumerate(args):
        if arg.startswith("--log="):
            return arg[len("--log="):]
        if arg == "--log" and index + 1 < len(args):
            return args[index + 1]
    return None


class Monitor:
    """One container (or exec session) from the runtime call to the exit command."""

    def __init__(self, daemon: Daemon, reaper: Reaper) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.options = daemon.config.options
        self.reaper = reaper
        self.key = channels.result_key(api_version=self.options.api_version,
                                       exec_mode=self.config.mode is Mode.EXEC)
        self.sync = daemon.channels.sync
        self.sizer = WindowSizer()
        self.stdin: StdinWriter | None = None
        self.drivers: LogDrivers | None = None
        self.attach: AttachServer | None = None
        self.fifos: ControlFifos | None = None
        self.io: MonitorIO | None = None
        self.target_pid = 0

    # ---------------------------------------------------------------------------- set-up

    def _open_sinks(self) -> Fanout:
        config, options = self.config, self.options
        drivers = config.log_drivers
        try:
            self.drivers = open_log_drivers(
                LogConfig(drivers.k8s_file, drivers.journald, drivers.passthrough),
                cid=config.cid, name=options.name, tag=options.log_tag,
                log_size_max=options.log_size_max, log_global_size_max=options.log_global_size_max,
                no_sync_log=options.no_sync_log)
        except LogDriverError as error:
            raise self._setup_failed(str(error)) from error
        finally:
            if config.k8s_log_fd is not None:  # validation's check; the sink has its own fd
                with contextlib.suppress(OSError):
                    os.close(config.k8s_log_fd)
        if options.stdin or options.terminal:
            self.stdin = StdinWriter()
        sinks = list(self.drivers.sinks)
        if config.bundle is not None and not drivers.passthrough:
            try:
                self.attach = AttachServer.create(
                    bundle=config.bundle, cuuid=options.cuuid or config.cid,
                    full_attach=options.full_attach, socket_dir=options.socket_dir_path,
                    stdin=self.stdin,
                    close_stdin_on_detach=options.stdin and not options.leave_stdin_open)
            except AttachError as error:
                raise self._setup_failed(str(error)) from error
            self.attach.start()
            sinks.append(self.attach)
            try:
                self.fifos = ControlFifos(config.bundle, on_resize=self.sizer.resize,
                                          on_reopen=self.drivers.reopen)
            except OSError as error:
                raise self._setup_failed(f"[conmon:e]: Failed to create ctl fifo: {error}") \
                    from error
            self.fifos.start()
        return Fanout(sinks)

    def _setup_failed(self, text: str) -> MonitorFailed:
        """conmon's pexit() after the fork: exit 1, nothing on the sync channel (the parent
        sees EOF), the line in the monitor's log."""
        log.error("%s", text)
        return MonitorFailed()

    def _fail(self, text: bytes | None) -> MonitorFailed:
        """Tell the parent (nothing if there is no text: it then sees EOF)."""
        if text is not None:
            self.sync = write_message(self.sync, channels.message(self.key, -1, text))
        log.error("start-up failed: %s", (text or b"").decode(errors="replace"))
        return MonitorFailed()

    def _engine_failure(self, error: errors.EngineError) -> MonitorFailed:
        if isinstance(error, errors.RuntimeFailed) and error.stderr is not None:
            return self._fail(channels.runtime_failure_text(error.stderr))
        if isinstance(error, errors.InvalidInput):
            # Refused before the runtime ran (a bundle without config.json): where conmon's
            # runtime would have failed and said why, the parent gets our reason.
            return self._fail(str(error).encode())
        return self._setup_failed(str(error))  # e.g. no pid file: conmon's pexit, no message

    def _container(self) -> Container:
        bundle = self.config.bundle or self.config.cwd
        return Container(container_id=self.config.cid, bundle=bundle,
                         config=ContainerConfig(runtime=runtime_config(self.config)),
                         reaper=self.reaper, listener=_Quiet(), files=ConmonFiles(self.config))

    # ------------------------------------------------------------------------------ run

    async def run(self) -> int:
        fanout = self._open_sinks()
        self.io = MonitorIO(fanout, stdin=self.stdin, terminal=self.options.terminal,
                            sizer=self.sizer, passthrough=self.daemon.passthrough)
        self._forward_signals()
        container = self._container()
        if self.config.mode is Mode.EXEC:
            process: Process = await self._start_exec(container, self.io)
        else:
            process = await self._create(container, self.io)
        self.target_pid = process.pid
        if not self.config.legacy_exec:
            self.sync = write_message(self.sync, channels.pid_message(self.key, process.pid))
        oom = None
        if self.config.mode is not Mode.EXEC:
            oom = OomMonitor(bundle=self.config.bundle, persist_dir=self.options.persist_dir)
            oom.watch(process.pid)
        timed_out = False
        try:
            if self.options.timeout > 0:
                status, _ = await asyncio.wait_for(process.wait(), self.options.timeout)
            else:
                status, _ = await process.wait()
        except TimeoutError:
            timed_out, status = True, -1
        return await self._conclude(status, timed_out=timed_out, oom=oom)

    async def _create(self, container: Container, io: MonitorIO) -> Process:
        restore = self.options.restore if self.config.mode is Mode.RESTORE else None
        try:
            with _runtime_oom_score():
                await container.create([], StdioConfig(terminal=self.options.terminal), io=io,
                                       restore_from=restore)
        except errors.EngineError as error:
            raise self._engine_failure(error) from error
        return container.init

    async def _start_exec(self, container: Container, io: MonitorIO) -> Process:
        container.adopt()
        exec_id = self.options.cuuid or DEFAULT_EXEC_ID
        process = container.add_exec(exec_id, StdioConfig(terminal=self.options.terminal),
                                     spec_file=self.options.exec_process_spec, io=io)
        if self.options.exec_attach:
            # The attach socket is ready; the parent's second start byte releases the runtime.
            write_message(self.daemon.channels.attach, channels.ATTACH_READY)
            await self._second_start_byte()
        try:
            with _runtime_oom_score():
                await container.runtime_start_exec(process)
        except errors.EngineError as error:
            raise self._engine_failure(error) from error
        return process

    async def _second_start_byte(self) -> None:
        fd = self.daemon.channels.start
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.read(fd, 8192)
        os.close(fd)

    def _forward_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for number in FORWARDED:
            loop.add_signal_handler(number, self._forward, number)

    def _forward(self, number: int) -> None:
        if self.target_pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.target_pid, number)

    # ----------------------------------------------------------------------------- exit

    async def _conclude(self, status: int, *, timed_out: bool, oom: OomMonitor | None) -> int:
        options, io = self.options, self.io
        assert io is not None
        exit_command = None
        if options.exit_command:
            exit_command = ExitCommand(options.exit_command, options.exit_command_args,
                                       options.exit_delay)
        send = None
        if self.config.mode is Mode.EXEC:
            def send(final: int) -> None:
                message = channels.exit_message(self.key, final, timed_out=timed_out)
                self.sync = write_message(self.sync, message)
        steps = ExitSteps(
            cid=self.config.cid, persist_dir=options.persist_dir, exit_dir=options.exit_dir,
            drain=io.wait_output, log_drivers=self.drivers, attach=self.attach, oom=oom,
            close_resources=self._close_resources, send_exit_message=send,
            exit_command=exit_command, reaper=self.reaper,
        )
        try:
            return await conclude(steps, status, timed_out=timed_out,
                                  container_pid=self.target_pid)
        except ExitFileError as error:
            log.error("%s", error)
            return 1

    def _close_resources(self) -> None:
        if self.fifos is not None:
            self.fifos.close()
        for fd in self.daemon.inherited_fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def close(self) -> None:
        if self.io is not None:
            await self.io.close()
        if self.stdin is not None:
            self.stdin.close()
        if self.fifos is not None:
            self.fifos.close()
        if self.attach is not None:
            await self.attach.close(0)
            self.attach.unlink()
        if self.drivers is not None:
            self.drivers.close()


@contextlib.contextmanager
def _runtime_oom_score() -> Iterator[None]:
    """The runtime (and the container it starts) must not inherit the monitor's -1000: conmon
    writes 0 in its runtime child; ours is spawned by the engine, so the score is lowered around
    the call."""
    adjust_oom_score("0")
    try:
        yield None
    finally:
        adjust_oom_score("-1000")


def run_monitor(daemon: Daemon) -> NoReturn:
    """launch's Monitor: run the loop, then leave without interpreter clean-up."""
    _set_up_logging()
    try:
        import uvloop

        # Not uvloop.run(): its teardown cancels and awaits every task left and joins the
        # executor, unbounded; the monitor's work is done when _main returns, and the process
        # ends right after (no interpreter clean-up either: this may be a fork of the server).
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        status = loop.run_until_complete(_main(daemon))
    except Exception:
        log.exception("the monitor failed")
        status = 1
    sys.stdout.flush()
    os._exit(status)


async def _main(daemon: Daemon) -> int:
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    monitor = Monitor(daemon, reaper)
    try:
        return await monitor.run()
    except MonitorFailed:
        return 1
    finally:
        try:
            await monitor.close()
        except Exception:
            log.exception("closing the monitor")
        # Before the loop closes: a late SIGCHLD must not reach a closed loop.
        reaper.uninstall()


def _set_up_logging() -> None:
    path = os.environ.get(DEBUG_LOG_VARIABLE)
    if path:
        logging.basicConfig(filename=path, level=logging.DEBUG, force=True,
                            format=f"%(asctime)s {os.getpid()} %(name)s %(levelname)s %(message)s")
