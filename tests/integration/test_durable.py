"""Exit records: readable the moment they are recorded, fsynced by the worker thread after
(pyshim.durable), whose failures never reach the caller."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from pyshim import durable
from pyshim.bundle import ExitRecord, read_exit_record
from pyshim.process.files import BundleFiles


def test_a_record_is_there_at_once_and_synced_off_the_calling_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[str, str]] = []
    release = threading.Event()

    def slow_sync(path: str) -> None:
        release.wait(10)  # a disk that takes its time: record_exit must not wait for it
        synced.append((path, str(threading.get_ident())))

    monkeypatch.setattr("pyshim.bundle.make_durable", slow_sync)
    record = ExitRecord(3, 1_700_000_000_000_000_000, 77)
    BundleFiles(str(tmp_path)).record_exit(None, record)
    assert read_exit_record(str(tmp_path / "init.exit")) == record
    assert synced == []
    release.set()
    assert durable.flush(10)
    assert synced == [(str(tmp_path / "init.exit"), str(durable.worker_thread()))]
    assert durable.worker_thread() != threading.get_ident()


def test_a_failed_sync_is_logged_and_a_vanished_file_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def failing(path: str) -> None:
        raise PermissionError(13, "Permission denied")

    def vanished(path: str) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    with caplog.at_level(logging.ERROR, logger="pyshim.durable"):
        durable.sync_later(failing, str(tmp_path / "a"))
        durable.sync_later(vanished, str(tmp_path / "b"))
        assert durable.flush(10)
    messages = [r.getMessage() for r in caplog.records if r.name == "pyshim.durable"]
    assert messages == [f"cannot make {tmp_path / 'a'} durable: [Errno 13] Permission denied"]


def test_make_durable_syncs_a_written_record(tmp_path: Path) -> None:
    from pyshim.bundle import make_durable, write_exit_record

    path = str(tmp_path / "init.exit")
    write_exit_record(path, ExitRecord(0, 1, 2), durable=False)
    make_durable(path)  # the file and its directory exist: no error
    with pytest.raises(FileNotFoundError):
        make_durable(str(tmp_path / "gone.exit"))


def test_a_forked_child_gets_its_own_worker(tmp_path: Path) -> None:
    # The fork-server ran a worker (its rehearsal) before forking daemons: a child must not
    # queue to a thread that stayed behind in its parent, or its exit would wait the whole
    # flush bound (seen: every daemon lingered 5 s after its last Shutdown).
    durable.sync_later(lambda path: None, str(tmp_path / "parent"))
    assert durable.flush(10)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            synced: list[str] = []
            durable.sync_later(synced.append, str(tmp_path / "child"))
            flushed = durable.flush(10)
            own = durable.worker_thread() not in (None, threading.get_ident())
            os.write(write_end, repr((flushed, own, synced)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        result = report.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert result == repr((True, True, [str(tmp_path / "child")]))


def test_stop_ends_the_worker_thread(tmp_path: Path) -> None:
    durable.sync_later(lambda path: None, str(tmp_path / "x"))
    before = len(os.listdir("/proc/self/task"))
    assert durable.stop(10)
    assert durable.worker_thread() is None
    assert len(os.listdir("/proc/self/task")) == before - 1
