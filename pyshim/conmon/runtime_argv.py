"""The OCI runtime's command line for a conmon-style monitor (spec §5.1), as conmon 2.1.6 builds
it: a pure function of the validated configuration and the console socket's path; and the one
environment change the runtime child makes, LISTEN_PID (§5.4).

The result is a plain frozen value (the runtime's path and its argv), ready to be handed to the
engine's runtime description; nothing here runs anything. `--log`/`--log-format` are not ours to
add: podman passes them as `--runtime-arg`s, and they go through verbatim like every other.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pyshim.conmon.validate import ConmonConfig, Mode


@dataclass(frozen=True, slots=True)
class RuntimeCommand:
    """`argv[0]` is the runtime's path (execv'd as given: no PATH search)."""

    argv: tuple[str, ...]
    #: create, restore or exec: what the runtime is asked to do.
    subcommand: str

    @property
    def path(self) -> str:
        return self.argv[0]


def runtime_command(config: ConmonConfig, console_socket: str | None = None) -> RuntimeCommand:
    """create:  RUNTIME [--systemd-cgroup] [RUNTIME-ARG...] create --bundle B --pid-file P
                    [--no-pivot] [--no-new-keyring] [RUNTIME-OPT...] [--console-socket S] CID
    restore: ... restore --bundle B --pid-file P [--no-pivot] [--no-new-keyring] --detach
                    --image-path DIR --work-path B [RUNTIME-OPT...] [--console-socket S] CID
    exec:    RUNTIME [RUNTIME-ARG...] exec --pid-file P --process SPEC --detach [--tty]
                    [RUNTIME-OPT...] [--console-socket S] CID
    """
    options = config.options
    argv = [config.runtime]
    if config.mode != Mode.EXEC and options.systemd_cgroup:
        argv.append("--systemd-cgroup")
    argv.extend(options.runtime_args)
    if config.mode == Mode.EXEC:
        assert options.exec_process_spec is not None  # validation requires it
        argv += ["exec", "--pid-file", config.container_pidfile,
                 "--process", options.exec_process_spec, "--detach"]
        if options.terminal:
            # conmon 2.1.6 adds it (2.1.11 dropped it: the process JSON says terminal: true);
            # runc accepts both, and we match the version we report.
            argv.append("--tty")
    else:
        assert config.bundle is not None  # create/restore default to the cwd
        argv += [config.mode, "--bundle", config.bundle,
                 "--pid-file", config.container_pidfile]
        if options.no_pivot:
            argv.append("--no-pivot")
        if options.no_new_keyring:
            argv.append("--no-new-keyring")
        if config.mode == Mode.RESTORE:
            assert options.restore is not None
            argv += ["--detach", "--image-path", options.restore, "--work-path", config.bundle]
    argv.extend(options.runtime_opts)  # --runtime-opt and --restore-arg, interleaved in order
    if console_socket is not None:
        argv += ["--console-socket", console_socket]
    argv.append(config.cid)
    return RuntimeCommand(argv=tuple(argv), subcommand=config.mode)


class ListenPidError(Exception):
    """The runtime child cannot start: conmon's child writes `line` on its stderr (the stderr
    pipe, so the parent gets it as the runtime's failure message) and exits 1."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("utf-8", "replace").rstrip("\n"))
        self.line = line


def runtime_listen_pid(environ: Mapping[str, str], *, monitor_pid: int, runtime_pid: int,
                       replace: bool) -> str | None:
    """Socket activation (spec §5.4): the LISTEN_PID the runtime child must set before exec,
    or None to leave the environment as it is.

    conmon parses it with strtol(value, NULL, 10): leading whitespace, a sign, then digits up
    to the first non-digit (`12abc` is 12); no digits is 0. The long is cut to a C int. A
    value <= 0 or out of range refuses the start. It is replaced by the child's PID with
    `--replace-listen-pid`, or when it names the monitor (systemd passed it to us).
    """
    value = environ.get("LISTEN_PID")
    if value is None:
        return None
    text = value.lstrip(" \t\n\v\f\r")
    sign = -1 if text[:1] == "-" else 1
    if text[:1] in ("+", "-"):
        text = text[1:]
    digits = ""
    for character in text:
        if not ("0" <= character <= "9"):
            break
        digits += character
    number = sign * int(digits) if digits else 0
    code = 0
    if not -(1 << 63) <= number < (1 << 63):
        code = errno.ERANGE
    listen_pid = (number + (1 << 31)) % (1 << 32) - (1 << 31)
    if code or listen_pid <= 0:
        raise ListenPidError(f"[conmon:e]: Invalid LISTEN_PID {value[:10]} "
                             f"{os.strerror(code)}\n".encode())
    if replace or listen_pid == monitor_pid:
        return str(runtime_pid)
    return None
