"""Container processes as explicit state objects, and the container that owns them.

`Container` drives runc, io, mounts and cgroups for one container id; `InitProcess` and
`ExecProcess` move through their states (spec §3.4). Nothing here speaks ttrpc or protobuf
events: outcomes go to a `Listener`.
"""

from pyshim.process.base import Process, ProcessState, Status
from pyshim.process.container import Container, Listener
from pyshim.process.exec import ExecProcess
from pyshim.process.init import InitProcess

__all__ = [
    "Container",
    "ExecProcess",
    "InitProcess",
    "Listener",
    "Process",
    "ProcessState",
    "Status",
]
