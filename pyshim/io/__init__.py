"""Standard I/O of container processes: what runc gets as fds 0/1/2 and where the bytes go.

`open_process_io` turns containerd's stdio strings into a ProcessIO; backends (FIFO today;
file://, binary:// and terminals next) share its small interface, so the process layer never
knows which one it drives.
"""

from pyshim.io.process_io import (
    NullIO,
    PipeIO,
    ProcessIO,
    StdioConfig,
    UnsupportedStdio,
    open_process_io,
)

__all__ = [
    "NullIO",
    "PipeIO",
    "ProcessIO",
    "StdioConfig",
    "UnsupportedStdio",
    "open_process_io",
]
