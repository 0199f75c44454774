"""conmon 2.1.6's checks of a parsed command line, in its order and with its messages (spec §2.4,
§8.1): `ConmonOptions` in, a `ConmonConfig` out, or `ValidationError` with the exact stderr line.

The few facts that need the host (is the runtime executable, the cwd, are stdio ttys, can the
k8s-file be opened) come through `Host`, so the order and the texts are testable without IO.
Opening the k8s-file is one of conmon's checks; its fd is handed on, never written here.
"""

from __future__ import annotations

import errno
import os

from pyshim.conmon.frozen import Frozen
from pyshim.conmon.options import ConmonOptions

TYPE_CHECKING = False  # lean: every launched process imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol
else:
    Protocol = object


class ValidationError(Exception):
    """Exit status 1 with `line` (bytes, newline included) on stderr."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("utf-8", "replace").rstrip("\n"))
        self.line = line


def _nexit(text: str) -> ValidationError:  # conmon's nexit(): "[conmon:e] <text>"
    return ValidationError(b"[conmon:e] " + _bytes(text) + b"\n")


def _nexitf(text: str) -> ValidationError:  # nexitf(): "[conmon:e]: <text>"
    return ValidationError(b"[conmon:e]: " + _bytes(text) + b"\n")


def _pexit(text: str, code: int) -> ValidationError:  # pexit(f)(): "... <strerror(errno)>"
    return ValidationError(b"[conmon:e]: " + _bytes(text) + b" " + os.strerror(code).encode()
                           + b"\n")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Mode:
    """What the runtime is asked to do (also its sub-command's name)."""

    CREATE = "create"
    RESTORE = "restore"
    EXEC = "exec"


class LogLevel:
    """The monitor's own diagnostics level (`--log-level`, default warn): higher says more."""

    ERROR = 0
    WARN = 1
    INFO = 2
    DEBUG = 3
    TRACE = 4


_LOG_LEVELS = {"error": LogLevel.ERROR, "fatal": LogLevel.ERROR, "panic": LogLevel.ERROR,
               "warn": LogLevel.WARN, "warning": LogLevel.WARN, "info": LogLevel.INFO,
               "debug": LogLevel.DEBUG, "trace": LogLevel.TRACE}


class LogDrivers(Frozen):
    """Which log drivers the `-l` values select (all of them receive all output)."""

    __slots__ = ("journald", "k8s_file", "passthrough")
    k8s_file: str | None  # only one k8s-file: the last one named
    journald: bool
    passthrough: bool

    def __init__(self, k8s_file: str | None = None, journald: bool = False,
                 passthrough: bool = False) -> None:
        self._set(k8s_file=k8s_file, journald=journald, passthrough=passthrough)


class ConmonConfig(Frozen):
    """A command line conmon accepts, with its defaults resolved."""

    __slots__ = ("bundle", "cid", "container_pidfile", "cwd", "k8s_log_fd", "log_drivers",
                 "log_level", "mode", "options", "runtime", "seccomp_notify_plugins")
    options: ConmonOptions
    mode: str  # a Mode
    cid: str
    runtime: str
    #: Create/restore: `-b` or the cwd. Exec: `-b` or None (legacy exec: no attach socket).
    bundle: str | None
    container_pidfile: str
    cwd: str
    log_level: int  # a LogLevel
    log_drivers: LogDrivers
    #: `--seccomp-notify-plugins`, else CONMON_SECCOMP_NOTIFY_PLUGINS.
    seccomp_notify_plugins: str | None
    #: The k8s-file, opened (O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC, 0600) as conmon's check does.
    k8s_log_fd: int | None

    def __init__(self, *, options: ConmonOptions, mode: str, cid: str, runtime: str,
                 bundle: str | None, container_pidfile: str, cwd: str, log_level: int,
                 log_drivers: LogDrivers, seccomp_notify_plugins: str | None,
                 k8s_log_fd: int | None = None) -> None:
        self._set(options=options, mode=mode, cid=cid, runtime=runtime, bundle=bundle,
                  container_pidfile=container_pidfile, cwd=cwd, log_level=log_level,
                  log_drivers=log_drivers, seccomp_notify_plugins=seccomp_notify_plugins,
                  k8s_log_fd=k8s_log_fd)

    @property
    def legacy_exec(self) -> bool:
        return self.mode == Mode.EXEC and not self.options.api_version


class Host(Protocol):
    """The host facts validation needs (RealHost; tests answer them)."""

    def access_executable(self, path: str) -> int:
        """0 if `path` passes access(X_OK), else the errno."""
        raise NotImplementedError

    def getcwd(self) -> str | None:
        raise NotImplementedError

    def isatty(self, fd: int) -> bool:
        raise NotImplementedError

    def open_k8s_log(self, path: str) -> int:
        """The opened log file's fd; raises OSError."""
        raise NotImplementedError


class RealHost:
    def access_executable(self, path: str) -> int:
        if os.access(path, os.X_OK):
            return 0
        try:  # access() tells no reason; the failing call's errno is what conmon prints
            os.stat(path)
        except OSError as error:
            return error.errno or errno.ENOENT
        return errno.EACCES

    def getcwd(self) -> str | None:
        try:
            return os.getcwd()
        except OSError:
            return None

    def isatty(self, fd: int) -> bool:
        return os.isatty(fd)

    def open_k8s_log(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


#: cuuid length journald needs (conmon's TRUNC_ID_LEN: the id must be longer).
_SHORT_ID = 12


def validate(options: ConmonOptions, host: Host, environ: Mapping[str, str]) -> ConmonConfig:
    """conmon's process_cli() after `-c` was found present (the caller checks that first, with
    its own message, right after `--version`)."""
    assert options.cid is not None
    log_level = LogLevel.WARN
    if options.log_level is not None:
        level = _LOG_LEVELS.get(options.log_level.lower()) if options.log_level.isascii() else None
        if level is None:
            raise _nexitf(f"No such log level {options.log_level}")
        log_level = level
    if options.restore is not None and options.exec:
        raise _nexit("Cannot use 'exec' and 'restore' at the same time")
    if not options.exec and options.exec_attach:
        raise _nexit("Attach can only be specified with exec")
    if not options.api_version and options.exec_attach:
        raise _nexit("Attach can only be specified for a non-legacy exec session")
    if options.cuuid is None and (not options.exec or options.api_version):
        raise _nexit("Container UUID not provided. Use --cuuid")
    plugins = options.seccomp_notify_plugins
    if plugins is None:
        plugins = environ.get("CONMON_SECCOMP_NOTIFY_PLUGINS")
    if options.runtime is None:
        raise _nexit("Runtime path not provided. Use --runtime")
    access_error = host.access_executable(options.runtime)
    if access_error:
        raise _pexit(f"Runtime path {options.runtime} is not valid", access_error)
    if options.exec and options.exec_process_spec is None:
        raise _nexit("Exec process spec path not provided. Use --exec-process-spec")
    cwd = host.getcwd()
    if cwd is None:
        raise _nexit("Failed to get working directory")
    bundle = options.bundle
    if bundle is None and not options.exec:
        bundle = cwd
    if options.exit_delay < 0:
        raise _nexit("Delay before invoking exit command must be greater than or equal to 0")
    pidfile = options.container_pidfile
    if pidfile is None:
        pidfile = f"{cwd}/pidfile-{options.cid}"
    drivers, k8s_log_fd = _log_drivers(options, host)
    mode = Mode.EXEC if options.exec else Mode.RESTORE if options.restore else Mode.CREATE
    return ConmonConfig(
        options=options, mode=mode, cid=options.cid, runtime=options.runtime, bundle=bundle,
        container_pidfile=pidfile, cwd=cwd, log_level=log_level, log_drivers=drivers,
        seccomp_notify_plugins=plugins, k8s_log_fd=k8s_log_fd,
    )


def _log_drivers(options: ConmonOptions, host: Host) -> tuple[LogDrivers, int | None]:
    """configure_log_drivers(): every `-l` in order, then open the k8s-file, then the checks
    that depend on the combination."""
    if not options.log_paths:
        raise _nexit("Log driver not provided. Use --log-path")
    drivers = LogDrivers()
    for value in options.log_paths:
        drivers = parse_log_path(value, drivers, host)
    k8s_log_fd = None
    if drivers.k8s_file is not None:
        try:
            k8s_log_fd = host.open_k8s_log(drivers.k8s_file)
        except OSError as error:
            raise _pexit("Failed to open log file", error.errno or errno.EIO) from None
        if not drivers.journald and options.log_tag is not None:
            raise _nexit("k8s-file doesn't support --log-tag")
    if drivers.journald:
        assert options.cid is not None
        if len(options.cid.encode("utf-8", "surrogateescape")) <= _SHORT_ID:
            raise _nexit("Container ID must be longer than 12 characters")
    return drivers, k8s_log_fd


def parse_log_path(value: str, drivers: LogDrivers, host: Host) -> LogDrivers:
    """One `-l` value (spec §8.1): `DRIVER:PATH`, `PATH` or `DRIVER`, split like strtok(":")
    into its first two non-empty tokens (a path is cut at its next colon, as conmon does)."""
    tokens = [token for token in value.split(":") if token]
    driver = tokens[0] if tokens else None
    path = tokens[1] if len(tokens) > 1 else None
    if driver is None:
        raise _nexitf("log-path must not be empty")
    if path is None and value.startswith(":"):
        driver, path = "k8s-file", driver  # `:/p/ctr.log`; so `:none` is a file named none
    if driver in ("off", "null", "none"):
        return drivers
    if driver == "passthrough":
        if host.isatty(0) or host.isatty(1) or host.isatty(2):
            raise _nexitf("cannot use a tty with passthrough logging mode to prevent attacks "
                          "via TIOCSTI")
        return LogDrivers(drivers.k8s_file, drivers.journald, passthrough=True)
    if driver == "journald":
        return LogDrivers(drivers.k8s_file, journald=True, passthrough=drivers.passthrough)
    if driver == "k8s-file":
        if path is None:
            raise _nexitf("k8s-file requires a filename")
        return LogDrivers(path, drivers.journald, drivers.passthrough)
    if path is None and ":" not in value:
        return LogDrivers(driver, drivers.journald, drivers.passthrough)
    raise _nexitf(f"No such log driver {driver}")
