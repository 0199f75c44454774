"""`pyshim run`'s command line and what it runs: the parsed options, the container id checked
with containerd's rules, and the bundle (given with --bundle, or generated from `runc spec`).

Runs `runc spec` (no reaper installed yet) and nothing else; raises RunError with the one line
`pyshim run` prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pyshim import identifiers
from pyshim.run_demo import BUSYBOX

#: runc's state root for our containers: never containerd's (/run/containerd/runc).
RUNC_ROOT = "/run/pyshim-run"
NAMESPACE = "default"
#: Exit status for errors of pyshim run itself or of the runtime (as docker and podman do).
EXIT_RUNTIME_ERROR = 125
#: The container's command was found but cannot be executed / was not found.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Files the engine writes into a bundle; removed again from a bundle given with --bundle.
ENGINE_BUNDLE_FILES = ("log.json", "init.pid", "shim.pid", "init.exit")

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

With a terminal (-t, or a bundle's process.terminal: true), the container's pty is relayed
to/from ours: our terminal is in raw mode meanwhile (^C reaches the container as a keystroke)
and every resize of it (SIGWINCH) is passed on.

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


class UsageError(Exception):
    """A command line argparse refuses."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyshim run", usage=USAGE, epilog=EPILOG,
        description="Run a container in the foreground with pyshim (no containerd needed).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--bundle", metavar="DIR", help="an OCI bundle (DIR/config.json)")
    source.add_argument("--rootfs", metavar="DIR", help="a root filesystem to run CMD in")
    parser.add_argument("--id", metavar="ID",
                        help="container id, by containerd's rules (default: a random one)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the container a terminal: ours, in raw mode, its size kept "
                             "in step (a bundle whose process.terminal is true always gets one, "
                             "as with runc run)")
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
    #: The container's stdio is a terminal (process.terminal in its config.json).
    terminal: bool = False
    # --bundle: engine files (log.json, init.pid, …) that were not there before we ran.
    bundle_files_before: set[str] | None = None


# ------------------------------------------------------------------------- what to run


def prepare(args: argparse.Namespace, command: list[str], temporary: list[str]) -> Plan:
    """Validate the command line and make the bundle (runc spec runs here: no reaper yet)."""
    log_path = None
    if args.log_path is not None:
        log_path = os.path.abspath(args.log_path)
        if not os.path.isdir(os.path.dirname(log_path)):
            raise RunError(f"--log-path {log_path}: directory {os.path.dirname(log_path)} "
                           "does not exist")
        if os.path.isdir(log_path):
            raise RunError(f"--log-path {log_path} is a directory: name the log file "
                           f"(e.g. {os.path.join(log_path, 'container.log')})")
    elif args.log_size_max:
        raise RunError("--log-size-max only goes with --log-path")
    plan = _prepare_bundle(args, command, temporary)
    if plan.terminal and log_path is not None:
        raise RunError("--log-path does not go with a terminal (-t, or process.terminal in "
                       "the bundle): a terminal has no separate stdout and stderr to log")
    plan.log_path, plan.log_size_max = log_path, args.log_size_max
    return plan


def _prepare_bundle(
    args: argparse.Namespace, command: list[str], temporary: list[str]
) -> Plan:
    if args.id is not None:
        _check_id(args.id)
    rootfs_only = [name for name, value in (("--env", args.env), ("--cwd", args.cwd)) if value]
    if args.bundle is not None:
        if command:
            raise RunError("--bundle runs the bundle's own process; give no command "
                           f"(got {' '.join(command)!r})")
        if rootfs_only:
            raise RunError(f"{' and '.join(rootfs_only)} only go with --rootfs")
        bundle = os.path.abspath(args.bundle)
        terminal = _check_bundle(bundle)
        if args.tty and not terminal:
            raise RunError(f"-t: {os.path.join(bundle, 'config.json')} has process.terminal "
                           "false; set it to true (pyshim run does not change a given bundle)")
        return Plan(
            container_id=args.id or _random_id("pyshim-run"), bundle=bundle, runc=args.runc,
            verbose=args.verbose, bundle_files_before=_engine_files(bundle), terminal=terminal,
        )
    if args.rootfs is not None:
        if not command:
            raise RunError("--rootfs needs a command: pyshim run --rootfs DIR -- CMD [ARG...]")
        rootfs = os.path.abspath(args.rootfs)
        if not os.path.isdir(rootfs):
            what = "is not a directory" if os.path.exists(rootfs) else "does not exist"
            raise RunError(f"rootfs {rootfs} {what}")
        bundle = _temporary_dir("pyshim-run-", temporary)
        _generate_bundle(bundle, args.runc, rootfs, command, env=args.env, cwd=args.cwd,
                         terminal=args.tty)
        return Plan(container_id=args.id or _random_id("pyshim-run"), bundle=bundle,
                    runc=args.runc, verbose=args.verbose, terminal=args.tty)
    if command:
        raise RunError("a command needs --rootfs DIR (or use --bundle DIR)")
    if rootfs_only:
        raise RunError(f"{' and '.join(rootfs_only)} only go with --rootfs")
    from pyshim.run_demo import DEMO_SCRIPT, DemoError, make_busybox_rootfs

    bundle = _temporary_dir("pyshim-demo-", temporary)
    try:
        rootfs = make_busybox_rootfs(os.path.join(bundle, "rootfs"))
    except DemoError as error:
        raise RunError(str(error)) from error
    _generate_bundle(bundle, args.runc, rootfs, ["/bin/sh", "-c", DEMO_SCRIPT],
                     terminal=args.tty)
    return Plan(container_id=args.id or _random_id("pyshim-demo"), bundle=bundle,
                runc=args.runc, verbose=args.verbose, terminal=args.tty)


def _check_id(container_id: str) -> None:
    """containerd's rules: the id becomes runc's argument, a state directory and a cgroup name,
    so `.`/`..` (a path), `-x` (a runc flag) and overlong ids are refused here."""
    try:
        identifiers.validate(container_id, "container id")
    except identifiers.InvalidIdentifier as error:
        raise RunError(f"invalid {error}") from error


def _random_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _temporary_dir(prefix: str, temporary: list[str]) -> str:
    directory = tempfile.mkdtemp(prefix=prefix)
    temporary.append(directory)
    return directory


def _check_bundle(bundle: str) -> bool:
    """Whether the bundle's process wants a terminal; RunError if there is no usable spec."""
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
    process = spec.get("process")
    return isinstance(process, dict) and process.get("terminal") is True


def _engine_files(bundle: str) -> set[str]:
    return {name for name in ENGINE_BUNDLE_FILES if os.path.lexists(os.path.join(bundle, name))}


def remove_engine_files(bundle: str, before: set[str]) -> None:
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
    terminal: bool = False,
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
        output = (result.stderr or result.stdout).strip()
        raise RunError(f"{runc} spec failed ({_exit_description(result.returncode)}): "
                       f"{output or 'no output'}")
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as file:
        spec: dict[str, Any] = json.load(file)
    spec["root"] = {"path": rootfs, "readonly": False}
    spec["hostname"] = "pyshim"
    process = spec.setdefault("process", {})
    process["args"] = list(command)
    process["terminal"] = terminal
    process["env"] = _environment(env)
    if cwd is not None:
        process["cwd"] = cwd
    with open(path, "w", encoding="utf-8") as file:
        json.dump(spec, file, indent=2)


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


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


