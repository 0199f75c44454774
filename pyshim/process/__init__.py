"""Container processes as explicit state objects, and the container that owns them.

`Container` (container.py: its docstring lists the calls a front end makes) drives the OCI
runtime, io, mounts and cgroups for one container id; `InitProcess` and `ExecProcess` move
through their states (spec §3.4). A front end fills a `ContainerConfig` (config.py), may supply
`ContainerFiles` (files.py) and hears outcomes through a `Listener`. Nothing here speaks ttrpc,
protobuf or conmon's pipes; failures are pyshim.errors types.
"""

from pyshim.process.base import Process, ProcessState, Status
from pyshim.process.config import ContainerConfig, Listener
from pyshim.process.container import Container
from pyshim.process.exec import ExecProcess
from pyshim.process.files import BundleFiles, ContainerFiles, ExitRecord
from pyshim.process.init import InitProcess

__all__ = [
    "BundleFiles",
    "Container",
    "ContainerConfig",
    "ContainerFiles",
    "ExecProcess",
    "ExitRecord",
    "InitProcess",
    "Listener",
    "Process",
    "ProcessState",
    "Status",
]
