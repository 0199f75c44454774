"""The event spool: an append-only file of serialized envelopes that overflow memory, read
back in order and left for a later shim on shutdown. Owns the file format only; never decides
what is spooled, never sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct

log = logging.getLogger("pyshim.events")

SPOOL_NAME = "events.spool"
RECORD_HEADER = struct.Struct(">I")
# ttrpc's message limit; a longer record in the spool can only be garbage.
MAX_RECORD = 4 << 20


class SpoolCorrupt(Exception):
    """The spool file holds something that is not a whole record where one should be."""


class Spool:
    """Append-only file of records (4-byte big-endian length, serialized ForwardRequest),
    read back in order; emptied (truncated) whenever everything in it has been read.

    Records left by an earlier process (a shim that died with events in it) are read first; a
    record cut short by that death is discarded.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._fd = -1
        self._read_at = 0
        self._end = 0

    def open(self) -> None:
        if self._fd >= 0:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            size = os.fstat(fd).st_size
            at = count = 0
            while at + RECORD_HEADER.size <= size:
                (length,) = RECORD_HEADER.unpack(os.pread(fd, RECORD_HEADER.size, at))
                if length > MAX_RECORD or at + RECORD_HEADER.size + length > size:
                    break
                at += RECORD_HEADER.size + length
                count += 1
            if at != size:
                log.warning("event spool %s: discarding %d bytes of a cut-off record",
                            self.path, size - at)
                os.ftruncate(fd, at)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._end, self.count, self._read_at = fd, at, count, 0
        if count:
            log.info("event spool %s: %d events from an earlier run to deliver", self.path, count)
        elif at == 0:
            self._reset()

    def append(self, data: bytes) -> None:
        """Write one record; on failure nothing of it stays in the file."""
        self.open()
        record = RECORD_HEADER.pack(len(data)) + data
        at = self._end
        try:
            while record:
                written = os.pwrite(self._fd, record, at)
                record = record[written:]
                at += written
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)
            raise
        self._end = at
        self.count += 1

    def peek_size(self) -> int:
        """Length of the next record's data (there must be one)."""
        header = os.pread(self._fd, RECORD_HEADER.size, self._read_at)
        if len(header) != RECORD_HEADER.size:
            raise SpoolCorrupt(f"event spool {self.path}: header cut off at {self._read_at}")
        length: int = RECORD_HEADER.unpack(header)[0]
        if length > MAX_RECORD:
            raise SpoolCorrupt(f"event spool {self.path}: record of {length} bytes")
        return length

    def read(self) -> bytes:
        """The next record's data (there must be one)."""
        length = self.peek_size()
        data = os.pread(self._fd, length, self._read_at + RECORD_HEADER.size)
        if len(data) != length:
            raise SpoolCorrupt(f"event spool {self.path}: record cut off at {self._read_at}")
        self._read_at += RECORD_HEADER.size + length
        self.count -= 1
        if not self.count:
            self._reset()
        return data

    def remaining(self) -> bytes:
        """All unread records, as they are in the file."""
        if self._fd < 0 or not self.count:
            return b""
        return os.pread(self._fd, self._end - self._read_at, self._read_at)

    def discard(self) -> int:
        """Forget every unread record (after corruption); returns how many there were."""
        count, self.count = self.count, 0
        self._reset()
        return count

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _reset(self) -> None:
        # Emptied: start over at offset 0 so the file never grows past one overflow's worth.
        self._read_at = self._end = 0
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)

