"""Choosing the stdio backend for containerd's stdio strings (spec §6.1).

The mode follows `stdout`: a FIFO path, `file://`, `binary://`; a terminal wraps whichever
endpoint stdout names. Only opens endpoints; set-up that must wait happens in prepare().
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pyshim.io.base import NullIO, ProcessIO, StdioConfig, UnsupportedStdio
from pyshim.io.binary import BinaryLoggerIO
from pyshim.io.fifo import InputSource, OutputTarget, open_input, open_output
from pyshim.io.pipes import fifo_io, fifo_path, file_io, open_file_target
from pyshim.io.spool import DEFAULT_SPOOL_MAX, Spool
from pyshim.io.terminal import TerminalIO
from pyshim.reaper import Reaper


@dataclass(frozen=True, slots=True)
class IOContext:
    """Who the stdio is for: what a logging binary is told, and whose reaper starts it."""

    process_id: str
    namespace: str
    reaper: Reaper | None = None
    cwd: str | None = None
    uid: int = -1
    gid: int = -1
    name: str = "process"
    # Where a client FIFO's output is spilled while it has no reader.
    spool_dir: str | None = None
    spool_max: int = DEFAULT_SPOOL_MAX

    def spool(self, stream: str) -> Spool:
        if self.spool_dir:
            path = os.path.join(self.spool_dir, stream)
        else:  # no bundle (tests, `pyshim run` without one): a private temp name
            path = os.path.join(tempfile.gettempdir(),
                                f"pyshim-spool-{os.getpid()}-{id(self)}-{stream}")
        return Spool(path, limit=self.spool_max, name=f"{self.name} {stream}")


def open_process_io(config: StdioConfig, context: IOContext) -> ProcessIO:
    """The ProcessIO for containerd's stdio strings.

    Raises UnsupportedStdio for unknown schemes and bad URIs, OSError (with the path) when an
    endpoint cannot be opened.
    """
    if config.is_null:
        return NullIO()
    scheme = urlsplit(config.stdout).scheme if "://" in config.stdout else ""
    if scheme in ("", "fifo"):
        if config.terminal:
            return _terminal(config, context, _fifo_output(config.stdout, context))
        return fifo_io(config, uid=context.uid, gid=context.gid, name=context.name,
                       spool=context.spool)
    if scheme == "file":
        path = unquote(urlsplit(config.stdout).path)
        if not os.path.isabs(path):
            raise UnsupportedStdio(f"file:// stdio needs an absolute path, got {config.stdout!r}")
        if config.terminal:
            return _terminal(config, context, open_file_target(path))
        return file_io(config, path, uid=context.uid, gid=context.gid, name=context.name)
    if scheme == "binary":
        if context.reaper is None:
            raise UnsupportedStdio("binary:// stdio is not available here", unimplemented=True)
        return BinaryLoggerIO(
            config.stdout, process_id=context.process_id, namespace=context.namespace,
            reaper=context.reaper, cwd=context.cwd, terminal=config.terminal,
            uid=context.uid, gid=context.gid, name=context.name,
        )
    raise UnsupportedStdio(f"unknown STDIO scheme {scheme} in {config.stdout!r}")


def _fifo_output(value: str, context: IOContext) -> OutputTarget | None:
    return open_output(fifo_path(value), context.spool("stdout")) if value else None


def _terminal(
    config: StdioConfig, context: IOContext, stdout: OutputTarget | None
) -> TerminalIO:
    stdin: InputSource | None = None
    try:
        if config.stdin:
            stdin = open_input(fifo_path(config.stdin))
    except BaseException:
        if stdout is not None:
            stdout.close()
        raise
    return TerminalIO(stdin=stdin, stdout=stdout, name=context.name)
