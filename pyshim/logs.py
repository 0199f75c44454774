"""Container output as a CRI log file (k8s-file): `<time> <stream> <P|F> <content>` records.

Owns the record format, line splitting, the size caps and reopen (log rotation). Only partial
lines wait in memory: every record reaches the file before write() returns. It never reads the
file back and never swallows a write error: those are raised, naming the path, for the caller.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable

# Not `from typing import TYPE_CHECKING`: typing costs milliseconds at start-up that the conmon
# front end does not otherwise pay; mypy honours any constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    #: "utc" (containerd CRI, `…Z`) or "local" (conmon, `…+05:30`).
    TimestampStyle: TypeAlias = Literal["utc", "local"]

STREAMS = ("stdout", "stderr")
#: kubelet's and containerd's default maximum content of one record (16 KiB).
DEFAULT_MAX_LINE = 16 * 1024
# IOV_MAX is 1024; conmon flushes past 128 iovecs and so do we (keeps each writev modest).
_MAX_IOVECS = 128
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
# conmon opens the reopened file without O_APPEND; we keep O_APPEND so that a copytruncate
# rotation by someone else never leaves a hole of NULs before our next record. O_EXCL and
# O_NOFOLLOW: we run as root in a directory others may write to, so the temp file must be one
# we just created, never an existing file or a symlink planted to make us truncate its target.
_REOPEN_FLAGS = _OPEN_FLAGS | os.O_EXCL | os.O_NOFOLLOW
# EEXIST at the temp path more often than this means someone keeps re-planting it.
_REOPEN_ATTEMPTS = 3
_MODE = 0o640


class Timestamper:
    """RFC 3339 timestamps with exactly nine fraction digits, as bytes, cached per second.

    "utc" gives `…T18:50:14.445719431Z` (containerd CRI, what kubelet expects); "local" gives
    conmon's `…T18:50:14.445719431+00:00`: the process's local zone (TZ as of the last
    time.tzset()), numeric offset with a colon, UTC as `+00:00`, DST changes honoured.
    """

    __slots__ = ("_local", "_prefix", "_second", "_suffix")

    def __init__(self, style: TimestampStyle = "utc") -> None:
        if style not in ("utc", "local"):
            raise ValueError(f"timestamp style must be 'utc' or 'local', not {style!r}")
        self._local = style == "local"
        self._second: int | None = None
        self._prefix = b""
        self._suffix = b""

    def __call__(self, time_ns: int) -> bytes:
        second, nanos = divmod(time_ns, 1_000_000_000)
        if second != self._second:
            self._load(second)
        return b"%s%09d%s" % (self._prefix, nanos, self._suffix)

    def _load(self, second: int) -> None:
        if self._local:
            tm = time.localtime(second)
            # Offsets of historical zones may carry seconds; RFC 3339 has minutes only.
            minutes = abs(tm.tm_gmtoff) // 60
            sign = "-" if tm.tm_gmtoff < 0 else "+"
            suffix = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
        else:
            tm = time.gmtime(second)
            suffix = "Z"
        self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", tm).encode()
        self._suffix = suffix.encode()
        self._second = second


def format_timestamp(time_ns: int, style: TimestampStyle = "utc") -> str:
    """One CRI log timestamp (see Timestamper; use a Timestamper when formatting many)."""
    return Timestamper(style)(time_ns).decode()


def _cut(line: bytes, max_line: int) -> tuple[list[bytes], bytes]:
    """Split a line longer than max_line into full max_line pieces and a 1..max_line rest."""
    whole = (len(line) - 1) // max_line * max_line
    return [line[at : at + max_line] for at in range(0, whole, max_line)], line[whole:]


def _has_long_line(body: bytes, max_line: int) -> bool:
    """Whether some line of body (lines separated by newlines) is longer than max_line.

    Jumps from the last newline of one max_line+1 window to the next: a few C-speed memrchr
    calls per max_line bytes, instead of a Python step (or an object) per line.
    """
    start, end = 0, len(body)
    while end - start > max_line:
        newline = body.rfind(b"\n", start, start + max_line + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


class _Stream:
    __slots__ = ("full", "part", "pending")

    def __init__(self, name: str) -> None:
        # What follows the timestamp in this stream's F and P records.
        self.full = b" %s F " % name.encode()
        self.part = b" %s P " % name.encode()
        # The current line's bytes not yet written (buffer_lines mode): at most max_line.
        self.pending = bytearray()


class CriLogWriter:
    """Writes one container's stdout/stderr to `path` in the CRI log format.

    buffer_lines=True (containerd CRI semantics): lines are reassembled across write() calls;
    every complete line is an F record; a line longer than max_line is cut into P records of
    exactly max_line bytes once more than max_line bytes of it are known, so F records hold
    0..max_line bytes (a line of exactly max_line bytes is one F record, as in containerd).
    The partial line still pending at EOF is written as a P record by flush().

    buffer_lines=False (conmon §8.2.2): each chunk is split at every `\\n`, the trailing piece
    without `\\n` is a P record at once; max_line still cuts longer pieces into P records.

    All records of one write() share one timestamp and go out in one write/writev.
    max_size > 0: when the next record would take the file past max_size bytes, the file is
    reopened empty first (conmon --log-size-max: truncation, the old content is discarded).
    max_total > 0: once max_total bytes have been written in all, further records are dropped;
    the record that crosses the limit is written whole (conmon --log-global-size-max).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_size: int = 0,
        max_total: int = 0,
        timestamps: TimestampStyle = "utc",
        buffer_lines: bool = True,
        clock: Callable[[], int] = time.time_ns,
        sync: bool = True,
    ) -> None:
        if max_line < 0 or max_size < 0 or max_total < 0:
            raise ValueError("max_line, max_size and max_total must not be negative")
        self.path = os.fspath(path)
        self.max_line = max_line
        self.max_size = max_size
        self.max_total = max_total
        self.buffer_lines = buffer_lines
        self.sync = sync
        self._clock = clock
        self._stamp = Timestamper(timestamps)
        self._streams = {name: _Stream(name) for name in STREAMS}
        #: Bytes in the current file (counted from its size at open), for max_size.
        self.size = 0
        #: Bytes this writer has written, for max_total.
        self.total = 0
        #: Records not written because of max_total.
        self.dropped = 0
        # A failed write may have left half a record; the next write starts a fresh line.
        self._torn = False
        self._fd = -1
        try:
            self._fd = os.open(self.path, _OPEN_FLAGS, _MODE)
            self.size = os.fstat(self._fd).st_size
        except OSError as err:
            self._close_fd()
            raise self._error(err, "opening") from err

    # -- public API ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def write(self, stream: str, data: bytes) -> None:
        """Log one chunk of a stream's output ("stdout" or "stderr"); any bytes at all."""
        state = self._streams.get(stream)
        if state is None or self._fd < 0:
            state = self._state(stream)  # raises the right error
        if not data:
            return
        max_line = self.max_line
        last = data.rfind(b"\n")
        # body: the complete lines (without the last \n) as one bytes, None if there are none;
        # splitting it into lines is left to the slow path, the fast one never needs to.
        body: bytes | None = None
        cuts: list[bytes] = []  # P records, after the F records of body
        if self.buffer_lines:
            pending = state.pending
            if last < 0:
                pending += data
            elif pending:
                view = memoryview(data)
                body = b"".join((pending, view[:last]))
                pending[:] = view[last + 1 :]
            else:
                body = data[:last]
                if last + 1 < len(data):
                    pending += data[last + 1 :]
            if max_line and len(pending) > max_line:
                cuts, rest = _cut(bytes(pending), max_line)
                pending[:] = rest
            if body is None and not cuts:
                return
        else:
            tail = data
            if last >= 0:
                body, tail = data[:last], data[last + 1 :]
            if tail:
                if max_line and len(tail) > max_line:
                    cuts, rest = _cut(tail, max_line)
                    cuts.append(rest)
                else:
                    cuts = [tail]
        self._emit(state, body, cuts)

    def flush(self, stream: str | None = None) -> None:
        """Write the pending partial line of `stream` (default: both) as a P record.

        For end of stream: containerd ends a last line without `\\n` with a P record, so a
        reader gets the exact bytes back. Nothing to do with buffer_lines=False.
        """
        for name in STREAMS if stream is None else (stream,):
            state = self._state(name)
            if state.pending:
                content = bytes(state.pending)
                state.pending.clear()
                self._emit(state, None, [content])

    def reopen(self) -> None:
        """Start a new, empty file at `path` (kubelet's ReopenContainerLog, conmon ctl 2).

        The current file is fsynced (if sync) and closed; a fresh `temp_path` is created
        (exclusively: a stale file or symlink there is unlinked, never followed) and renamed
        to `path`, so a rotated-away file stays as it is and anyone watching the directory sees
        the new file appear. Pending partial lines stay buffered: they belong to the new file.
        """
        self._check_open()
        self._reopen()

    @property
    def temp_path(self) -> str:
        """Where reopen() creates the new file: `<path>.<pid>.tmp`, so that writers in
        different processes never take each other's temp file."""
        return f"{self.path}.{os.getpid()}.tmp"

    def close(self) -> None:
        """Flush both streams' partial lines, fsync (if sync) and close. Idempotent.

        The fd is closed even when the last writes or the fsync fail; the error is raised then.
        """
        if self._fd < 0:
            return
        try:
            self.flush()
            if self.sync:
                self._fsync()
        finally:
            self._close_fd()

    def __enter__(self) -> CriLogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- records -----------------------------------------------------------------------------

    def _emit(self, state: _Stream, body: bytes | None, cuts: list[bytes]) -> None:
        """Write F records for the lines of body then P records for cuts, stamped now."""
        stamp = self._stamp(self._clock())
        max_line = self.max_line
        if (
            body is None
            or not max_line
            or len(body) <= max_line
            or not _has_long_line(body, max_line)
        ):
            # The common case: every line fits, so the F records are one bytes.replace (no
            # Python work per line) and the whole batch one write(2).
            pieces: list[bytes] = []
            if body is not None:
                full = stamp + state.full
                pieces += (full, body.replace(b"\n", b"\n" + full), b"\n")
            if cuts:
                part = stamp + state.part
                pieces += [part + cut + b"\n" for cut in cuts]
            # One join: `a + b + c` of large bytes costs a copy (and fresh pages) per `+`.
            block = b"".join(pieces)
            size = len(block)
            if (not self.max_size or self.size + size <= self.max_size) and (
                not self.max_total or self.total + size <= self.max_total
            ):
                if self._torn:
                    self._write([block], size)
                    return
                # _write() inlined: this is the path of almost every write().
                try:
                    written = os.write(self._fd, block)
                except OSError as err:
                    raise self._error(err, "writing") from err
                self.size += written
                self.total += written
                if written != size:
                    self._write_rest([block[written:]])
                return
            # A limit is reached within this batch: go record by record below.
        full = stamp + state.full
        part = stamp + state.part
        records: list[bytes] = []
        for line in body.split(b"\n") if body is not None else ():
            if max_line and len(line) > max_line:
                cut_off, line = _cut(line, max_line)
                records.extend([part + piece + b"\n" for piece in cut_off])
            records.append(full + line + b"\n")
        records.extend([part + cut + b"\n" for cut in cuts])
        if self.max_size or self.max_total:
            self._write_limited(records)
        else:
            joined = b"".join(records)
            self._write([joined], len(joined))

    def _write_limited(self, records: list[bytes]) -> None:
        """Write records one by one against max_size (truncate) and max_total (drop)."""
        batch: list[bytes] = []
        batch_size = 0
        for index, record in enumerate(records):
            if self.max_total and self.total + batch_size >= self.max_total:
                self.dropped += len(records) - index
                break
            if self.max_size and self.size + batch_size + len(record) > self.max_size:
                if batch:
                    self._write(batch, batch_size)
                    batch, batch_size = [], 0
                self._reopen()
            batch.append(record)
            batch_size += len(record)
            if len(batch) >= _MAX_IOVECS:
                self._write(batch, batch_size)
                batch, batch_size = [], 0
        if batch:
            self._write(batch, batch_size)

    # -- file --------------------------------------------------------------------------------

    def _write(self, blocks: list[bytes], size: int) -> None:
        """Write all of blocks (size bytes in all, at most _MAX_IOVECS of them)."""
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

    def _state(self, stream: str) -> _Stream:
        self._check_open()
        try:
            return self._streams[stream]
        except KeyError:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}") from None

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
