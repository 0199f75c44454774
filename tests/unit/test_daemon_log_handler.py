"""The shim daemon's log handler (pyshim.shim.daemon._LogHandler): every pyshim logger's
records as logfmt lines on fd 2 (the bundle's log FIFO in a daemon), one line each."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from pyshim.shim import daemon
from pyshim.shim.start import DaemonConfig


@pytest.fixture
def daemon_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """configure_logging with the handler's stream on a pipe instead of fd 2 (pytest's capture
    owns fd 2); yields the pipe's read end. Restores the pyshim logger after."""
    root = logging.getLogger("pyshim")
    saved = (list(root.handlers), root.level, root.propagate, dict(daemon._LOG_FORMATTER.fields))
    reader, writer = os.pipe()
    monkeypatch.setattr(daemon._LOG_STREAM, "fd", writer)
    try:
        daemon.configure_logging(DaemonConfig(namespace="ns1", id="c1", address="",
                                              ttrpc_address="", bundle="/b", socket_path=""))
        yield reader
    finally:
        root.handlers[:], level, root.propagate, fields = saved
        root.setLevel(level)
        daemon._LOG_FORMATTER.fields.clear()
        daemon._LOG_FORMATTER.fields.update(fields)
        os.close(reader)
        os.close(writer)


def test_records_are_written_as_logfmt_lines(daemon_logging: int) -> None:
    log = logging.getLogger("pyshim.test")
    log.info("starting %s", "loop", extra={"fields": {"path": "/run/x y"}})
    log.debug("not at info")
    lines = os.read(daemon_logging, 65536).decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith('time="')
    assert lines[0].endswith(f' level=info msg="starting loop" namespace=ns1 '
                             f'runtime=io.containerd.pyshim.v1 pid={os.getpid()} '
                             f'path="/run/x y"')


def test_a_record_that_cannot_be_formatted_is_reported_not_raised(
        daemon_logging: int, monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(daemon._LOG_HANDLER, "handleError", reported.append)
    record = logging.LogRecord("pyshim.test", logging.INFO, __file__, 1, "%d", ("nan",), None)
    assert daemon._LOG_HANDLER.handle(record) is True
    assert reported == [record]
