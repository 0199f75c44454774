"""conmon's journald driver on a real datagram socket standing in for the journal (there is no
journald here): entries per line, partial lines, the memfd fallback, a missing journal."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from pathlib import Path

import pytest

from pyshim.conmon.logdrivers import JournaldSink

CID = "0123456789abcdef0123456789abcdef"


def test_journald_entries_on_a_real_datagram_socket(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = short_tmp / "journal.sock"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    journal.setblocking(False)
    try:
        sink = JournaldSink(CID, name="web", socket_path=str(path))
        sink.write("stdout", b"a\nb")
        sink.write("stdout", b"c\n")
        sink.write("stderr", b"e" * 9000)  # more than a partial line may hold: sent partial
        sink.write("stdout", b"tail")
        sink.close()  # flushes the partial line as a partial entry
        entries = []
        while True:
            try:
                entries.append(journal.recv(1 << 20))
            except BlockingIOError:
                break
    finally:
        journal.close()

    def message(entry: bytes) -> bytes:
        if entry.startswith(b"MESSAGE="):
            return entry[8 : entry.index(b"\n")]
        assert entry.startswith(b"MESSAGE\n")
        (length,) = struct.unpack("<Q", entry[8:16])
        return entry[16 : 16 + length]

    assert [message(e) for e in entries] == [b"a\n", b"bc\n", b"e" * 9000, b"tail"]
    assert [b"CONTAINER_PARTIAL_MESSAGE=true\n" in e for e in entries] == [
        False, False, True, True]
    assert [b"PRIORITY=3\n" in e for e in entries] == [False, False, True, False]
    assert sink.sent == 4

    missing = JournaldSink(CID, socket_path=str(short_tmp / "no-journal"))
    with caplog.at_level("WARNING", logger="pyshim.conmon"):
        missing.write("stdout", b"lost\n")
        missing.write("stdout", b"lost too\n")
    missing.close()
    warnings = [r for r in caplog.records if "cannot write to the journal" in r.getMessage()]
    assert len(warnings) == 1 and missing.sent == 0


def test_journald_entry_too_large_for_a_datagram_goes_in_a_sealed_memfd(short_tmp: Path) -> None:
    path = short_tmp / "journal.sock"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    journal.setblocking(False)
    try:
        sink = JournaldSink(CID, socket_path=str(path))
        sink.write("stdout", b"small\n")  # opens the socket
        assert sink._socket is not None
        sink._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        line = b"z" * 60000 + b"\n"
        sink.write("stdout", line)
        sink.close()
        assert journal.recv(1 << 16).startswith(b"MESSAGE\n\x06\0\0\0\0\0\0\0small\n\n")
        data, ancillary, _, _ = journal.recvmsg(1 << 16, socket.CMSG_SPACE(4))
        assert data == b""
        (level, kind, payload), = ancillary
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        (fd,) = struct.unpack("i", payload)
        try:
            entry = os.pread(fd, 1 << 16, 0)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        finally:
            os.close(fd)
    finally:
        journal.close()
    assert entry == sink.entry("stdout", line, partial=False)
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
    assert sink.sent == 2
