"""The CRI log file under the writer: open, write/writev to the end, reopen by exclusive temp
file and rename, fsync, errors naming the path. Knows nothing of records; never reads the file
back and never swallows a write error.
"""

from __future__ import annotations

import contextlib
import errno
import os

# IOV_MAX is 1024; conmon flushes past 128 iovecs and so do we (keeps each writev modest).
MAX_IOVECS = 128
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
# conmon opens the reopened file without O_APPEND; we keep O_APPEND so that a copytruncate
# rotation by someone else never leaves a hole of NULs before our next record. O_EXCL and
# O_NOFOLLOW: we run as root in a directory others may write to, so the temp file must be one
# we just created, never an existing file or a symlink planted to make us truncate its target.
_REOPEN_FLAGS = _OPEN_FLAGS | os.O_EXCL | os.O_NOFOLLOW
# EEXIST at the temp path more often than this means someone keeps re-planting it.
_REOPEN_ATTEMPTS = 3
_MODE = 0o640


class CriLogFile:
    """One open log file and its byte counts; CriLogWriter's base."""

    def __init__(self, path: str | os.PathLike[str], *, sync: bool) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        #: Bytes in the current file (counted from its size at open), for max_size.
        self.size = 0
        #: Bytes this writer has written, for max_total.
        self.total = 0
        # A failed write may have left half a record; the next write starts a fresh line.
        self._torn = False
        self._fd = -1
        try:
            self._fd = os.open(self.path, _OPEN_FLAGS, _MODE)
            self.size = os.fstat(self._fd).st_size
        except OSError as err:
            self._close_fd()
            raise self._error(err, "opening") from err

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def temp_path(self) -> str:
        """Where reopen() creates the new file: `<path>.<pid>.tmp`, so that writers in
        different processes never take each other's temp file."""
        return f"{self.path}.{os.getpid()}.tmp"

    def _write(self, blocks: list[bytes], size: int) -> None:
        """Write all of blocks (size bytes in all, at most MAX_IOVECS of them)."""
        fd = self._fd
        if fd < 0:
            self._check_open()
        if self._torn:
            blocks = [b"\n", *blocks]
            size += 1
        try:
            written = os.write(fd, blocks[0]) if len(blocks) == 1 else os.writev(fd, blocks)
        except OSError as err:
            raise self._error(err, "writing") from err
        self.size += written
        self.total += written
        self._torn = False
        if written != size:
            self._write_rest(_advance(blocks, written))

    def _write_rest(self, blocks: list[bytes]) -> None:
        """After a short write: retry until done or an error says why (ENOSPC, EFBIG…)."""
        while blocks:
            try:
                written = os.writev(self._fd, blocks)
            except OSError as err:
                self._torn = True  # part of a record is in the file already
                raise self._error(err, "writing") from err
            self.size += written
            self.total += written
            blocks = _advance(blocks, written)

    def _reopen(self) -> None:
        if self.sync:
            self._fsync()
        tmp = self.temp_path
        fd = self._create_exclusive(tmp)
        try:
            os.rename(tmp, self.path)
        except OSError as err:
            os.close(fd)
            _unlink_quietly(tmp)
            raise self._error(err, "reopening") from err
        # The old fd stays until the new file is in place, so a failed reopen leaves a writer
        # that still works (on the old file).
        old, self._fd = self._fd, fd
        self.size = 0
        self._torn = False
        try:
            os.close(old)
        except OSError as err:
            raise self._error(err, "closing") from err

    def _create_exclusive(self, tmp: str) -> int:
        """A new empty file at tmp; whatever is there already (a stale temp file of a crashed
        writer with our pid, a planted symlink) is unlinked, which never follows a link."""
        for _ in range(_REOPEN_ATTEMPTS):
            try:
                return os.open(tmp, _REOPEN_FLAGS, _MODE)
            except FileExistsError:
                pass
            except OSError as err:
                raise self._error(err, "reopening", tmp) from err
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as err:
                raise self._error(err, "reopening", tmp) from err
        raise self._error(OSError(errno.EEXIST, os.strerror(errno.EEXIST)), "reopening", tmp)

    def _fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as err:
            # EINVAL: the path is something that cannot be synced (a FIFO, /dev/null).
            if err.errno != errno.EINVAL:
                raise self._error(err, "syncing") from err

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as err:
                raise self._error(err, "closing") from err

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"CRI log {self.path} is closed")

    def _error(self, err: OSError, action: str, path: str | None = None) -> OSError:
        """The same OSError (errno kept), saying what we were doing to which file."""
        return OSError(err.errno, f"{err.strerror} ({action} CRI log)", path or self.path)


def _unlink_quietly(path: str) -> None:
    # The error being raised already says what went wrong.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _advance(blocks: list[bytes], written: int) -> list[bytes]:
    """What is left of blocks after the first `written` bytes went out."""
    for index, block in enumerate(blocks):
        if written < len(block):
            return [block[written:], *blocks[index + 1 :]] if written else blocks[index:]
        written -= len(block)
    return []
