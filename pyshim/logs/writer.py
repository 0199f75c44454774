"""The CRI log writer: `<time> <stream> <P|F> <content>` records, line reassembly and cutting,
the size caps (max_size truncates, max_total drops). Only partial lines wait in memory: every
record reaches the file before write() returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from pyshim.logs.logfile import MAX_IOVECS, CriLogFile
from pyshim.logs.timestamps import Timestamper

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyshim.logs.timestamps import TimestampStyle

STREAMS = ("stdout", "stderr")
#: kubelet's and containerd's default maximum content of one record (16 KiB).
DEFAULT_MAX_LINE = 16 * 1024


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


class CriLogWriter(CriLogFile):
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
        self.max_line = max_line
        self.max_size = max_size
        self.max_total = max_total
        self.buffer_lines = buffer_lines
        self._clock = clock
        self._stamp = Timestamper(timestamps)
        self._streams = {name: _Stream(name) for name in STREAMS}
        #: Records not written because of max_total.
        self.dropped = 0
        super().__init__(path, sync=sync)

    # -- public API ------------------------------------------------------------------------

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
            if len(batch) >= MAX_IOVECS:
                self._write(batch, batch_size)
                batch, batch_size = [], 0
        if batch:
            self._write(batch, batch_size)

    def _state(self, stream: str) -> _Stream:
        self._check_open()
        try:
            return self._streams[stream]
        except KeyError:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}") from None
