"""conmon's log drivers (spec §8): parsing `-l/--log-path` values, and the k8s-file and journald
sinks the output fan-out feeds; passthrough and none select no sink.

k8s-file is the engine's CriLogWriter in conmon's mode (local timestamps, no line buffering
across reads, truncation at --log-size-max, a cap at --log-global-size-max); journald speaks the
native journal protocol (spec §18.4) without libsystemd. Never reads container pipes itself.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pyshim.io.fanout import OutputSink
from pyshim.io.log_relay import CriLogOutput
from pyshim.logs import CriLogWriter

log = logging.getLogger("pyshim.conmon")

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: conmon's STDIO_BUF_SIZE: a partial line longer than this - 1 goes out as a partial entry.
JOURNAL_PARTIAL_MAX = 8192
_SHORT_ID = 12
_K8S_FILE = "k8s-file"
_NO_DRIVER = ("off", "null", "none")


class LogDriverError(Exception):
    """A log driver cannot be set up; str() is conmon's exact diagnostic line (spec §2.4)."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """What the `-l` values select: every selected driver receives all output."""

    k8s_file: str | None = None  # the last k8s-file path given
    journald: bool = False
    passthrough: bool = False


def parse_log_paths(values: Sequence[str], *, stdio_is_tty: bool = False) -> LogConfig:
    """The drivers the `-l` values select, in order, as conmon 2.1.6 parses them (spec §8.1).

    Each value is split on `:` into its first two non-empty tokens (so a path is cut at its
    next colon, as in conmon). `stdio_is_tty`: whether our stdin, stdout or stderr is a
    terminal, which 2.1.6 refuses for passthrough. Raises LogDriverError.
    """
    if not values:
        raise LogDriverError("[conmon:e] Log driver not provided. Use --log-path")
    k8s_file: str | None = None
    journald = passthrough = False
    for value in values:
        tokens = [token for token in value.split(":") if token]
        driver = tokens[0] if tokens else None
        path = tokens[1] if len(tokens) > 1 else None
        colon = value.find(":")
        if driver is None:
            raise LogDriverError("[conmon:e]: log-path must not be empty")
        if path is None and colon == 0:  # ":/p/ctr.log" is a k8s-file path
            driver, path = _K8S_FILE, driver
        if driver in _NO_DRIVER:
            continue  # none: other -l values still apply
        if driver == "passthrough":
            if stdio_is_tty:
                raise LogDriverError("[conmon:e]: cannot use a tty with passthrough logging mode "
                                     "to prevent attacks via TIOCSTI")
            passthrough = True
        elif driver == "journald":
            journald = True
        elif driver == _K8S_FILE:
            if path is None:
                raise LogDriverError("[conmon:e]: k8s-file requires a filename")
            k8s_file = path
        elif path is None and colon < 0:  # a plain path (CRI-O)
            k8s_file = driver
        else:
            raise LogDriverError(f"[conmon:e]: No such log driver {driver}")
    return LogConfig(k8s_file, journald, passthrough)


def stdio_is_tty() -> bool:
    return any(os.isatty(fd) for fd in (0, 1, 2))


# --------------------------------------------------------------------------------- k8s-file


class K8sFileSink(CriLogOutput):
    """conmon's k8s-file (spec §8.2): the engine's CRI log sink in conmon's mode."""

    name = "k8s-file"

    def __init__(self, path: str, *, size_max: int = -1, global_size_max: int = -1,
                 sync: bool = True) -> None:
        # Values <= 0 disable the caps. Every read (at most 8192 bytes) is split at each \n
        # with no buffering across reads, so max_line never has to cut.
        super().__init__(CriLogWriter(
            path, max_line=0, max_size=max(size_max, 0), max_total=max(global_size_max, 0),
            timestamps="local", buffer_lines=False, sync=sync,
        ))

    def reopen(self) -> None:
        self.writer.reopen()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------- journald


def journal_field(name: str, value: bytes) -> bytes:
    """One field of a native journal entry: `NAME=value\\n`, or for a value with a newline
    `NAME\\n` + its length (64-bit little-endian) + value + `\\n`."""
    if b"\n" in value:
        return b"%s\n%s%s\n" % (name.encode(), struct.pack("<Q", len(value)), value)
    return b"%s=%s\n" % (name.encode(), value)


class JournaldSink(OutputSink):
    """One journal entry per line (spec §8.3); partial lines wait per stream up to 8191 bytes.

    The socket is used only when writing; a failed send is a warning (logged once per cause),
    the entry is lost and the monitor goes on, as conmon does.
    """

    name = "journald"

    def __init__(self, cid: str, *, name: str | None = None, tag: str | None = None,
                 socket_path: str = JOURNAL_SOCKET) -> None:
        if len(cid) <= _SHORT_ID:
            raise LogDriverError("[conmon:e] Container ID must be longer than 12 characters")
        identifier = tag or name or cid[:_SHORT_ID]
        fields = [journal_field("CONTAINER_ID_FULL", cid.encode())]
        self._priority = {"stdout": journal_field("PRIORITY", b"6"),
                          "stderr": journal_field("PRIORITY", b"3")}
        tail = [journal_field("CONTAINER_ID", cid[:_SHORT_ID].encode())]
        if tag:
            tail.append(journal_field("CONTAINER_TAG", tag.encode()))
        if name:
            tail.append(journal_field("CONTAINER_NAME", name.encode()))
        tail.append(journal_field("SYSLOG_IDENTIFIER", identifier.encode()))
        self._head = b"".join(fields)
        self._tail = b"".join(tail)
        self._partial_flag = journal_field("CONTAINER_PARTIAL_MESSAGE", b"true")
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}
        self.socket_path = socket_path
        self._socket: socket.socket | None = None
        self._warned: set[int] = set()
        self.sent = 0

    def write(self, stream: str, data: bytes) -> None:
        pending = self._partial[stream]
        start = 0
        while start < len(data):
            newline = data.find(b"\n", start)
            if newline < 0:
                piece = data[start:]
                if len(piece) < JOURNAL_PARTIAL_MAX - len(pending):
                    pending += piece
                    return
                self._send(stream, bytes(pending) + piece, partial=True)
                pending.clear()
                return
            self._send(stream, bytes(pending) + data[start : newline + 1], partial=False)
            pending.clear()
            start = newline + 1

    def end(self, stream: str) -> None:
        pending = self._partial[stream]
        if pending:
            self._send(stream, bytes(pending), partial=True)
            pending.clear()

    def close(self) -> None:
        for stream in self._partial:
            self.end(stream)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def entry(self, stream: str, message: bytes, *, partial: bool) -> bytes:
        """The datagram for one line (MESSAGE keeps the line's \\n, spec §8.3)."""
        return b"".join((journal_field("MESSAGE", message), self._head, self._priority[stream],
                         self._tail, self._partial_flag if partial else b""))

    def _send(self, stream: str, message: bytes, *, partial: bool) -> None:
        payload = self.entry(stream, message, partial=partial)
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                self._socket.sendto(payload, socket.MSG_DONTWAIT, self.socket_path)
            except OSError as error:
                if error.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_in_memfd(payload)
        except OSError as error:
            if error.errno not in self._warned:
                self._warned.add(error.errno or 0)
                log.warning("[conmon:w]: cannot write to the journal at %s: %s",
                            self.socket_path, error.strerror)
            return
        self.sent += 1

    def _send_in_memfd(self, payload: bytes) -> None:
        """Too large for a datagram: the entry goes in a sealed memfd (spec §18.4)."""
        assert self._socket is not None
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            self._socket.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       struct.pack("i", fd))],
                                 socket.MSG_DONTWAIT, self.socket_path)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- all drivers


class LogDrivers:
    """The drivers one monitor writes to: `sinks` for the fan-out, reopen() for `ctl` type 2,
    close() at exit (journald partials flushed, the k8s-file fsynced unless no_sync)."""

    def __init__(self, config: LogConfig, k8s_file: K8sFileSink | None,
                 journald: JournaldSink | None) -> None:
        self.config = config
        self.k8s_file = k8s_file
        self.journald = journald

    @property
    def passthrough(self) -> bool:
        """The container inherits our stdio: no pipes, no attach socket, no FIFOs (§8.4)."""
        return self.config.passthrough

    @property
    def sinks(self) -> list[OutputSink]:
        return [sink for sink in (self.k8s_file, self.journald) if sink is not None]

    def reopen(self) -> None:
        """`ctl` 2 0 0 (spec §8.2.7): only the k8s-file is reopened; errors are raised."""
        if self.k8s_file is not None:
            self.k8s_file.reopen()

    def close(self) -> None:
        for sink in (self.journald, self.k8s_file):
            if sink is not None:
                try:
                    sink.close()
                except OSError as error:
                    log.warning("[conmon:w]: closing the %s log: %s", sink.name, error)


def open_log_drivers(
    config: LogConfig,
    *,
    cid: str,
    name: str | None = None,
    tag: str | None = None,
    log_size_max: int = -1,
    log_global_size_max: int = -1,
    no_sync_log: bool = False,
    journal_socket: str = JOURNAL_SOCKET,
) -> LogDrivers:
    """Open what `config` selects, with conmon's checks in its order (spec §2.4): the k8s-file
    is opened (its directory must exist), then --log-tag is refused without journald, then a
    journald cid must be longer than 12 characters. Raises LogDriverError."""
    k8s_file: K8sFileSink | None = None
    if config.k8s_file is not None:
        try:
            k8s_file = K8sFileSink(config.k8s_file, size_max=log_size_max,
                                   global_size_max=log_global_size_max, sync=not no_sync_log)
        except OSError as error:
            raise LogDriverError(
                f"[conmon:e]: Failed to open log file {os.strerror(error.errno or 0)}"
            ) from error
        if tag and not config.journald:
            with contextlib.suppress(OSError):
                k8s_file.close()
            raise LogDriverError("[conmon:e] k8s-file doesn't support --log-tag")
    journald: JournaldSink | None = None
    if config.journald:
        try:
            journald = JournaldSink(cid, name=name, tag=tag, socket_path=journal_socket)
        except LogDriverError:
            if k8s_file is not None:
                with contextlib.suppress(OSError):
                    k8s_file.close()
            raise
    return LogDrivers(config, k8s_file, journald)
