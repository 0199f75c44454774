from google.protobuf import empty_pb2 as _empty_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2 as _shim_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
