"""Standard I/O of container processes: what runc gets as fds 0/1/2 and where the bytes go.

`open_process_io` turns containerd's stdio strings into a ProcessIO; the backends (FIFO and
`file://` pipes, `binary://` loggers, terminals) share its small interface, so the process
layer never knows which one it drives.
"""

from pyshim.io.base import (
    NullIO,
    ProcessIO,
    StdioConfig,
    StdioError,
    StdioTimeout,
    UnsupportedStdio,
)
from pyshim.io.pipes import PipeIO
from pyshim.io.process_io import IOContext, open_process_io

__all__ = [
    "IOContext",
    "NullIO",
    "PipeIO",
    "ProcessIO",
    "StdioConfig",
    "StdioError",
    "StdioTimeout",
    "UnsupportedStdio",
    "open_process_io",
]
