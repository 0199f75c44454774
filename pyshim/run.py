"""`pyshim run`: one container in the foreground, driven by the engine the containerd shim uses
(process.Container, io.PipeIO relays of our own stdio, the Reaper), plus the busybox demo.

Owns its command line, the bundle it may generate (from `runc spec`) and the demo rootfs. Never
mounts anything, and never leaves a container, runc state or generated bundle behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import uvloop

from pyshim import logfmt
from pyshim.io import PipeIO, StdioConfig
from pyshim.io.fifo import InputSource, OutputTarget
from pyshim.io.log_relay import LogSink
from pyshim.logs import CriLogWriter
from pyshim.options import RuncOptions
from pyshim.process.base import Process, Status
from pyshim.process.container import Container
from pyshim.reaper import Reaper, become_subreaper
from pyshim.runtime import OCIRuntimeError
from pyshim.ttrpc.status import RPCError

log = logging.getLogger("pyshim.run")

#: runc's state root for our containers: never containerd's (/run/containerd/runc).
RUNC_ROOT = "/run/pyshim-run"
NAMESPACE = "default"
#: Exit status for errors of pyshim run itself or of the runtime (as docker and podman do).
EXIT_RUNTIME_ERROR = 125
#: The container's command was found but cannot be executed / was not found.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = "/bin/busybox"
#: Forwarded to the container's init; the second one received kills it (SIGKILL).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: After SIGKILL at clean-up, how long the init may take to be reaped.
KILL_WAIT = 10.0
#: Files the engine writes into a bundle; removed again from a bundle given with --bundle.
ENGINE_BUNDLE_FILES = ("log.json", "init.pid", "shim.pid", "init.exit")
_ID = re.compile(r"[\w+\-.]+")

USAGE = """\
pyshim run                                          the busybox demo container
       pyshim run [OPTIONS] --bundle DIR                   the OCI bundle DIR (its config.json)
       pyshim run [OPTIONS] --rootfs DIR -- CMD [ARG...]   CMD in the root filesystem DIR"""

EPILOG = f"""\
The container runs in the foreground under pyshim's process, I/O and reaper code: its stdin,
stdout and stderr are relayed from/to ours, SIGINT, SIGTERM and SIGHUP are forwarded to its
init process (a second one kills it), and pyshim run exits with the container's exit status
(128+N when killed by signal N). Errors of pyshim run or of runc exit with {EXIT_RUNTIME_ERROR}
({EXIT_NOT_FOUND} when the command is not found, {EXIT_NOT_EXECUTABLE} when it cannot be run).

With --rootfs, the bundle is `runc spec`'s default config.json with the root, command,
environment (PATH plus --env), working directory and hostname "pyshim" filled in; it lives in a
temporary directory removed afterwards. runc keeps its state under {RUNC_ROOT}/{NAMESPACE}. Needs
root and runc; the demo needs a static busybox at {BUSYBOX} (apt-get install busybox-static,
or scripts/demo does it all)."""


class RunError(Exception):
    """Why pyshim run cannot run the container: a one-line message and the exit status."""

    def __init__(self, message: str, status: int = EXIT_RUNTIME_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyshim run", usage=USAGE, epilog=EPILOG,
        description="Run a container in the foreground with pyshim (no containerd needed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", metavar="DIR", help="an OCI bundle (DIR/config.json)")
    source.add_argument("--rootfs", metavar="DIR", help="a root filesystem to run CMD in")
    parser.add_argument("--id", metavar="ID", help="container id (default: a random one)")
    parser.add_argument("-e", "--env", metavar="K=V", action="append", default=[],
                        help="environment variable for CMD (K alone: our value of K); "
                             "--rootfs only, repeatable")
    parser.add_argument("--cwd", metavar="DIR", help="working directory of CMD (--rootfs only)")
    parser.add_argument("--log-path", metavar="FILE",
                        help="also write the container's output to FILE in the CRI log format "
                             "(kubelet's `<time> <stream> <P|F> <text>` lines)")
    parser.add_argument("--log-size-max", metavar="BYTES", type=_size, default=0,
                        help="with --log-path: start the file afresh when it would grow past "
                             "BYTES (default: no limit)")
    parser.add_argument("--runc", metavar="BINARY", default="runc",
                        help="the OCI runtime binary (default: runc)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the container id and its exit status on stderr")
    parser.add_argument("--debug", action="store_true", help="pyshim's debug log on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = -1
    if size < 0:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {value!r}")
    return size


@dataclass(slots=True)
class Plan:
    """What to run: a ready bundle (generated ones are removed by run_main)."""

    container_id: str
    bundle: str
    runc: str
    verbose: bool
    log_path: str | None = None
    log_size_max: int = 0
    # --bundle: engine files (log.json, init.pid, …) that were not there before we ran.
    bundle_files_before: set[str] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    error: str | None = None


# ----------------------------------------------------------------------------- entry point


def run_main(argv: list[str]) -> int:
    """`pyshim run …` (and bare `pyshim`): the exit status of the container, or 125."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as error:
        print(f"pyshim run: {error} (see pyshim run --help)", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except SystemExit as done:  # --help
        return done.code if isinstance(done.code, int) else 0
    command = list(args.command)
    if command[:1] == ["--"]:
        del command[0]
    _fill_standard_fds()
    _configure_logging(args.debug)
    temporary: list[str] = []
    try:
        try:
            if os.geteuid() != 0:
                raise RunError("pyshim run needs root (runc creates namespaces and cgroups)")
            become_subreaper()
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            plan = _prepare(args, command, temporary)
        except RunError as error:
            print(f"pyshim run: {error.message}", file=sys.stderr)
            return error.status
        outcome = uvloop.run(_run(plan))
        if outcome.error is not None:
            print(f"pyshim run: {outcome.error}", file=sys.stderr)
        elif plan.verbose:
            print(f"pyshim run: container {plan.container_id} exited with status "
                  f"{outcome.status}{_signal_note(outcome.status)}", file=sys.stderr)
        if plan.bundle_files_before is not None:
            _remove_engine_files(plan.bundle, plan.bundle_files_before)
        return outcome.status
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as error:  # a bug, or an OS error nobody expected: still one line
        log.debug("pyshim run failed", exc_info=True)
        print(f"pyshim run: {error.__class__.__name__}: {error}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    finally:
        for directory in temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _signal_note(status: int) -> str:
    if status > 128:
        with contextlib.suppress(ValueError):
            return f" (killed by {signal.Signals(status - 128).name})"
    return ""


def _fill_standard_fds() -> None:
    """A closed fd 0, 1 or 2 becomes /dev/null: otherwise the next pipe would take its number
    and be relayed to itself (and uvloop refuses to handle fds 0-2 as ordinary ones)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


class _Stderr:
    """fd 2 for log lines: the stderr relay makes it non-blocking, so wait a little when it is
    full instead of failing (a reader that never reads costs us a dropped line, not a hang)."""

    def write(self, text: str) -> int:
        data = text.encode(errors="replace")
        while data:
            try:
                data = data[os.write(2, data):]
            except BlockingIOError:
                if not select.select([], [2], [], 1.0)[1]:
                    break
            except OSError:
                break
        return len(text)

    def flush(self) -> None:
        pass


def _configure_logging(debug: bool) -> None:
    logfmt.configure(
        _Stderr(),  # type: ignore[arg-type]
        level=logging.DEBUG if debug else logging.WARNING,
        fields={"runtime": "pyshim-run", "pid": os.getpid()},
    )
    # The relays' only warning is a reader going away: for our own stdout that is the user's
    # `| head`, not news.
    logging.getLogger("pyshim.io").setLevel(logging.DEBUG if debug else logging.ERROR)


# ------------------------------------------------------------------------- what to run


def _prepare(args: argparse.Namespace, command: list[str], temporary: list[str]) -> Plan:
    """Validate the command line and make the bundle (runc spec runs here: no reaper yet)."""
    log_path = None
    if args.log_path is not None:
        log_path = os.path.abspath(args.log_path)
        if not os.path.isdir(os.path.dirname(log_path)):
            raise RunError(f"--log-path {log_path}: directory {os.path.dirname(log_path)} "
                           "does not exist")
    elif args.log_size_max:
        raise RunError("--log-size-max only goes with --log-path")
    plan = _prepare_bundle(args, command, temporary)
    plan.log_path, plan.log_size_max = log_path, args.log_size_max
    return plan


def _prepare_bundle(
    args: argparse.Namespace, command: list[str], temporary: list[str]
) -> Plan:
    if args.id is not None and not _ID.fullmatch(args.id):
        raise RunError(f"invalid container id {args.id!r} (letters, digits, _ + - . only)")
    rootfs_only = [name for name, value in (("--env", args.env), ("--cwd", args.cwd)) if value]
    if args.bundle is not None:
        if command:
            raise RunError("--bundle runs the bundle's own process; give no command "
                           f"(got {' '.join(command)!r})")
        if rootfs_only:
            raise RunError(f"{' and '.join(rootfs_only)} only go with --rootfs")
        bundle = os.path.abspath(args.bundle)
        _check_bundle(bundle)
        return Plan(
            container_id=args.id or _random_id("pyshim-run"), bundle=bundle, runc=args.runc,
            verbose=args.verbose, bundle_files_before=_engine_files(bundle),
        )
    if args.rootfs is not None:
        if not command:
            raise RunError("--rootfs needs a command: pyshim run --rootfs DIR -- CMD [ARG...]")
        rootfs = os.path.abspath(args.rootfs)
        if not os.path.isdir(rootfs):
            what = "is not a directory" if os.path.exists(rootfs) else "does not exist"
            raise RunError(f"rootfs {rootfs} {what}")
        bundle = _temporary_dir("pyshim-run-", temporary)
        _generate_bundle(bundle, args.runc, rootfs, command, env=args.env, cwd=args.cwd)
        return Plan(container_id=args.id or _random_id("pyshim-run"), bundle=bundle,
                    runc=args.runc, verbose=args.verbose)
    if command:
        raise RunError("a command needs --rootfs DIR (or use --bundle DIR)")
    if rootfs_only:
        raise RunError(f"{' and '.join(rootfs_only)} only go with --rootfs")
    bundle = _temporary_dir("pyshim-demo-", temporary)
    rootfs = make_busybox_rootfs(os.path.join(bundle, "rootfs"))
    _generate_bundle(bundle, args.runc, rootfs, ["/bin/sh", "-c", DEMO_SCRIPT])
    return Plan(container_id=args.id or _random_id("pyshim-demo"), bundle=bundle,
                runc=args.runc, verbose=args.verbose)


def _random_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _temporary_dir(prefix: str, temporary: list[str]) -> str:
    directory = tempfile.mkdtemp(prefix=prefix)
    temporary.append(directory)
    return directory


def _check_bundle(bundle: str) -> None:
    if not os.path.isdir(bundle):
        what = "is not a directory" if os.path.exists(bundle) else "does not exist"
        raise RunError(f"bundle {bundle} {what}")
    config = os.path.join(bundle, "config.json")
    try:
        with open(config, "rb") as file:
            spec = json.load(file)
    except FileNotFoundError as error:
        raise RunError(f"bundle {bundle} has no config.json ({config})") from error
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read {config}: {error}") from error
    if not isinstance(spec, dict):
        raise RunError(f"{config} is not a JSON object")
    if (spec.get("process") or {}).get("terminal"):
        raise RunError(f"{config} asks for a terminal (process.terminal: true); pyshim run "
                       "relays plain pipes, set it to false")


def _engine_files(bundle: str) -> set[str]:
    return {name for name in ENGINE_BUNDLE_FILES if os.path.lexists(os.path.join(bundle, name))}


def _remove_engine_files(bundle: str, before: set[str]) -> None:
    for name in set(ENGINE_BUNDLE_FILES) - before:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(bundle, name))


def _generate_bundle(
    bundle: str,
    runc: str,
    rootfs: str,
    command: Sequence[str],
    *,
    env: Sequence[str] = (),
    cwd: str | None = None,
) -> None:
    """bundle/config.json: `runc spec`'s defaults, with our root, process and hostname."""
    if cwd is not None and not os.path.isabs(cwd):
        raise RunError(f"--cwd must be an absolute path inside the container, got {cwd!r}")
    try:
        result = subprocess.run(
            [runc, "spec", "--bundle", bundle], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as error:
        raise RunError(f"runc binary {runc!r} not found: install runc (apt-get install runc) "
                       "or run scripts/demo") from error
    except OSError as error:
        raise RunError(f"cannot run {runc}: {error}") from error
    if result.returncode != 0:
        raise RunError(f"{runc} spec failed: {(result.stderr or result.stdout).strip()}")
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as file:
        spec: dict[str, Any] = json.load(file)
    spec["root"] = {"path": rootfs, "readonly": False}
    spec["hostname"] = "pyshim"
    process = spec.setdefault("process", {})
    process["args"] = list(command)
    process["terminal"] = False
    process["env"] = _environment(env)
    if cwd is not None:
        process["cwd"] = cwd
    with open(path, "w", encoding="utf-8") as file:
        json.dump(spec, file, indent=2)


def _environment(values: Sequence[str]) -> list[str]:
    """PATH, then --env values in order (a later K replaces an earlier one; `K` alone takes our
    own value of K, and is left out when we have none)."""
    env = {"PATH": DEFAULT_PATH.partition("=")[2]}
    for value in values:
        key, equals, text = value.partition("=")
        if not key:
            raise RunError(f"--env {value!r}: the variable name is empty")
        if equals:
            env[key] = text
        elif key in os.environ:
            env[key] = os.environ[key]
    return [f"{key}={text}" for key, text in env.items()]


# ----------------------------------------------------------------------------------- demo

DEMO_SCRIPT = """\
echo "Hello from a busybox container under pyshim!"
echo
echo "  hostname: $(hostname)"
echo "  kernel:   $(uname -a)"
echo "  user:     $(id)"
echo "  pid:      $$ (the init of its own pid namespace)"
echo "  rootfs:   busybox with $(ls /bin | wc -l) applets in /bin"
echo
echo "Run your own: pyshim run --rootfs DIR -- CMD [ARG...]  (pyshim run --help)"
"""


def make_busybox_rootfs(directory: str, busybox: str = BUSYBOX) -> str:
    """A minimal rootfs in `directory`: a static busybox in /bin plus a symlink per applet."""
    if not os.path.exists(busybox):
        raise RunError(f"the demo needs a static busybox at {busybox}: install it with "
                       "`apt-get install busybox-static`, or run scripts/demo")
    if not _is_static_elf(busybox):
        raise RunError(f"{busybox} is not a statically linked program (the container has no "
                       "libc): install busybox-static (`apt-get install busybox-static`), or "
                       "run scripts/demo")
    bin_dir = os.path.join(directory, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    shutil.copy2(busybox, os.path.join(bin_dir, "busybox"))
    try:
        listed = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise RunError(f"{busybox} --list failed: {error}") from error
    for applet in {"sh", "echo", "cat", "ls", "sleep", "uname", "id", "hostname", *listed}:
        if applet != "busybox" and "/" not in applet:
            with contextlib.suppress(FileExistsError):
                os.symlink("busybox", os.path.join(bin_dir, applet))
    return directory


def _is_static_elf(path: str) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP); False if unreadable."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                return False
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:  # 64-bit
                (phoff,) = struct.unpack_from(order + "Q", header, 0x20)
                entry_size, count = struct.unpack_from(order + "HH", header, 0x36)
            else:
                (phoff,) = struct.unpack_from(order + "I", header, 0x1C)
                entry_size, count = struct.unpack_from(order + "HH", header, 0x2A)
            file.seek(phoff)
            table = file.read(entry_size * count)
    except (OSError, struct.error):
        return False
    pt_interp = 3
    return all(
        struct.unpack_from(order + "I", table, index * entry_size)[0] != pt_interp
        for index in range(count)
        if (index + 1) * entry_size <= len(table)
    )


# ------------------------------------------------------------------------ the container


class _Listener:
    """The engine's reports: only logged (the exit comes from `init.wait()`)."""

    def process_started(self, process: Process) -> None:
        log.debug("%s: started, pid %d", process.label, process.pid)

    def process_exited(self, process: Process) -> None:
        log.debug("%s: exited with status %d", process.label, process.exit_status)

    def container_oom(self, container: Container) -> None:
        log.warning("container %s: out of memory", container.id)


def _relayable_input(fd: int) -> bool:
    """Whether fd can be relayed: open, and pollable or a regular file (which splice reads
    without polling). /dev/null and other non-tty devices cannot be polled, and a terminal
    of which we are not the foreground job must not be read: the container gets /dev/null."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    if stat.S_ISCHR(mode):
        return os.isatty(fd) and _in_foreground(fd)
    return not stat.S_ISDIR(mode)


def _in_foreground(tty: int) -> bool:
    """A background job reading its terminal would be stopped (SIGTTIN): it relays nothing."""
    try:
        return os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False


def _own_stdio(name: str, log_writer: CriLogWriter | None = None) -> PipeIO:
    """Relays between the container's pipes and dup()s of our fds 0, 1 and 2; with a log
    writer, stdout and stderr go to the CRI log first, then on to ours."""
    stdin = InputSource(os.dup(0)) if _relayable_input(0) else None
    outputs: list[OutputTarget | LogSink | None] = []
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        try:
            target: OutputTarget | None = OutputTarget(os.dup(fd))
        except OSError:  # closed: the container gets /dev/null there (or only the log)
            target = None
        outputs.append(target if log_writer is None else LogSink(log_writer, stream, target))
    return PipeIO(stdin=stdin, stdout=outputs[0], stderr=outputs[1], name=name)


class _SignalForwarder:
    """SIGINT/SIGTERM/SIGHUP → the container's init; the second one received sends SIGKILL.

    Before the container is started, a signal only stops it from being started."""

    def __init__(self, loop: asyncio.AbstractEventLoop, container: Container) -> None:
        self.loop = loop
        self.container = container
        self.received: list[int] = []
        self.started = False
        self._sent = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def install(self) -> None:
        for signum in FORWARDED_SIGNALS:
            self.loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        log.debug("received %s", signal.Signals(signum).name)
        self.received.append(signum)
        if self.started:
            self._forward(signum)

    def mark_started(self) -> None:
        self.started = True
        for signum in self.received:
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        if self._sent:
            signum = signal.SIGKILL
            with contextlib.suppress(OSError):
                os.write(2, f"pyshim run: killing container {self.container.id}\n".encode())
        self._sent += 1
        task = self.loop.create_task(self._kill(signum))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kill(self, signum: int) -> None:
        log.debug("container %s: sending %s", self.container.id, signal.Signals(signum).name)
        try:
            await self.container.init.state.kill(signum, False)
        except RPCError as error:  # already gone, or being deleted
            log.debug("container %s: kill: %s", self.container.id, error)

    async def close(self) -> None:
        for signum in FORWARDED_SIGNALS:
            self.loop.remove_signal_handler(signum)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _create_failure_status(message: str) -> int:
    """docker/podman's convention: 127 command not found, 126 not executable, else 125."""
    if 'exec: "' in message:
        if "not found" in message or "no such file or directory" in message:
            return EXIT_NOT_FOUND
        if "permission denied" in message:
            return EXIT_NOT_EXECUTABLE
    return EXIT_RUNTIME_ERROR


async def _run(plan: Plan) -> Outcome:
    loop = asyncio.get_running_loop()
    options = RuncOptions(binary_name=plan.runc, root=RUNC_ROOT)
    state_dir = runc_state_dir(plan.container_id)
    if _exists(state_dir):
        return Outcome(EXIT_RUNTIME_ERROR, f"container id {plan.container_id} is already in use "
                                           f"(runc state {state_dir} exists)")
    reaper = Reaper()
    container = Container(
        container_id=plan.container_id, bundle=plan.bundle, namespace=NAMESPACE,
        options=options, reaper=reaper, listener=_Listener(),
    )
    forwarder = _SignalForwarder(loop, container)
    forwarder.install()
    reaper.install(loop)
    blocking = {fd: _get_blocking(fd) for fd in (0, 1, 2)}
    created = False
    log_writer: CriLogWriter | None = None
    try:
        if plan.log_path is not None:
            try:
                log_writer = CriLogWriter(plan.log_path, max_size=plan.log_size_max)
            except OSError as error:
                return Outcome(EXIT_RUNTIME_ERROR, str(error))
        try:
            await container.create([], StdioConfig(),
                                   io=_own_stdio(plan.container_id, log_writer))
        except RPCError as error:
            return Outcome(_create_failure_status(error.message), error.message)
        created = True
        log.debug("container %s: created, init pid %d", container.id, container.init.pid)
        if forwarder.received:  # interrupted while being created: never start it
            return Outcome(128 + forwarder.received[0])
        try:
            await container.start(container.init)
        except RPCError as error:
            return Outcome(_create_failure_status(error.message), error.message)
        forwarder.mark_started()
        status, _exited_at = await container.init.wait()
        return Outcome(status)
    finally:
        try:
            await _stop_and_delete(container, created, state_dir)
        finally:
            if log_writer is not None:
                try:
                    log_writer.close()
                except OSError as error:
                    log.error("%s", error)
            await forwarder.close()
            reaper.uninstall()
            for fd, was_blocking in blocking.items():
                if was_blocking is not None:
                    with contextlib.suppress(OSError):
                        os.set_blocking(fd, was_blocking)


def runc_state_dir(container_id: str) -> str:
    """Where runc keeps the state of our container `container_id`."""
    return os.path.join(RuncOptions(root=RUNC_ROOT).runc_root(NAMESPACE), container_id)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _get_blocking(fd: int) -> bool | None:
    try:
        return os.get_blocking(fd)
    except OSError:
        return None


async def _stop_and_delete(container: Container, created: bool, state_dir: str) -> None:
    """Whatever happened: kill the init if it still runs, delete it, release the I/O."""
    init = container.init
    try:
        if created:
            if not init.exited and init.status is not Status.CREATED:
                with contextlib.suppress(RPCError):
                    await init.state.kill(signal.SIGKILL, False)
                with contextlib.suppress(TimeoutError, RPCError):
                    await asyncio.wait_for(init.wait(), KILL_WAIT)
            try:
                await init.state.delete()
            except RPCError as error:
                log.warning("container %s: delete: %s", container.id, error.message)
        if _exists(state_dir):
            # Created by runc but not (fully) deleted, e.g. create failed half-way.
            try:
                await container.runc.delete(container.id, force=True)
            except OCIRuntimeError as error:
                log.warning("container %s: runc delete --force: %s", container.id,
                            error.message)
    finally:
        await container.close()
