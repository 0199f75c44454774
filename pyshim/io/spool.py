"""Output held for a FIFO whose reader went away (containerd restarting, `ctr run -d` gone).

A bounded FIFO of bytes: memory first, then a spill file beside the bundle, up to a cap; what
exceeds the cap is counted and logged, never silently lost. Order is strict: the oldest bytes
come out first. Knows nothing of relays or readers; never blocks on anything but local disk.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("pyshim.io")

# Default cap of one stream's spool (memory + file): containerd runtime option
# `output_spool_max` (options.py keeps the same default).
DEFAULT_SPOOL_MAX = 16 * 1024 * 1024

# Held in memory before spilling: a short containerd restart costs no disk at all.
MEMORY_MAX = 256 * 1024
__all__ = ["DEFAULT_SPOOL_MAX", "MEMORY_MAX", "Spool"]


class Spool:
    """Bytes waiting for a reader. `path` is where the spill file goes once memory is full."""

    def __init__(self, path: str, *, limit: int = DEFAULT_SPOOL_MAX, name: str = "output",
                 memory_max: int = MEMORY_MAX) -> None:
        self.path = path
        self.limit = limit
        self.name = name
        self.memory_max = min(memory_max, limit)
        # The oldest bytes are in memory; once the file is in use, new bytes go there until it
        # is read empty again, so the order never changes.
        self._memory = bytearray()
        self._file = -1
        self._file_read = 0
        self._file_write = 0
        self.dropped = 0
        self.spooled_total = 0

    def __len__(self) -> int:
        return len(self._memory) + self._file_write - self._file_read

    def append(self, data: bytes) -> None:
        room = self.limit - len(self)
        if len(data) > room:
            if self.dropped == 0:
                log.error("%s: output spool full (%d bytes); dropping output until a reader "
                          "returns", self.name, self.limit)
            self.dropped += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        if not data:
            return
        self.spooled_total += len(data)
        if self._file < 0 and len(self._memory) + len(data) <= self.memory_max:
            self._memory += data
            return
        try:
            self._spill(data)
        except OSError as error:
            self.dropped += len(data)
            log.error("%s: cannot spill output to %s (%s); %d bytes dropped",
                      self.name, self.path, error, len(data))

    def _spill(self, data: bytes) -> None:
        if self._file < 0:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._file = os.open(self.path, flags, 0o600)
            self._file_read = self._file_write = 0
        view = memoryview(data)
        while view:
            written = os.pwrite(self._file, view, self._file_write)
            self._file_write += written
            view = view[written:]

    def peek(self, size: int) -> bytes:
        """Up to `size` of the oldest bytes, left in place until consume()."""
        if self._memory:
            return bytes(self._memory[:size])
        if self._file >= 0 and self._file_write > self._file_read:
            return os.pread(self._file, min(size, self._file_write - self._file_read),
                            self._file_read)
        return b""

    def consume(self, size: int) -> None:
        """The oldest `size` bytes (as peek() gave them) have been delivered."""
        if self._memory:
            del self._memory[:size]
            return
        self._file_read += size
        if self._file_read >= self._file_write:
            self._remove_file()

    def report_loss(self) -> None:
        if self.dropped:
            log.error("%s: %d bytes of output were dropped (spool cap %d bytes)",
                      self.name, self.dropped, self.limit)

    def close(self) -> None:
        """Forget what is held (the process is deleted); logs what was never delivered."""
        held = len(self)
        if held:
            log.warning("%s: %d spooled bytes never reached a reader", self.name, held)
        self.report_loss()
        self._memory.clear()
        self._remove_file()

    def _remove_file(self) -> None:
        if self._file >= 0:
            os.close(self._file)
            self._file = -1
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self._file_read = self._file_write = 0
