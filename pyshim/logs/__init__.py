"""Container output as a CRI log file (k8s-file): `<time> <stream> <P|F> <content>` records.

Owns the record format, line splitting, the size caps and reopen (log rotation). Only partial
lines wait in memory: every record reaches the file before write() returns. It never reads the
file back and never swallows a write error: those are raised, naming the path, for the caller.

Modules: timestamps, logfile (open, write, reopen, fsync), writer (records, lines, caps).
"""

from __future__ import annotations

from pyshim.logs.timestamps import Timestamper, format_timestamp
from pyshim.logs.writer import DEFAULT_MAX_LINE, STREAMS, CriLogWriter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyshim.logs.timestamps import TimestampStyle as TimestampStyle

__all__ = ["DEFAULT_MAX_LINE", "STREAMS", "CriLogWriter", "Timestamper", "format_timestamp"]
