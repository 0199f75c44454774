from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("shim", "containers")
    SHIM_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    shim: Shim
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    def __init__(self, shim: _Optional[_Union[Shim, _Mapping]] = ..., containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ...) -> None: ...

class Shim(_message.Message):
    __slots__ = ("pid", "namespace", "id", "address", "ttrpc_address", "socket", "bundle", "version", "started_at_ns", "parent_pid")
    PID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TTRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    PARENT_PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    namespace: str
    id: str
    address: str
    ttrpc_address: str
    socket: str
    bundle: str
    version: str
    started_at_ns: int
    parent_pid: int
    def __init__(self, pid: _Optional[int] = ..., namespace: _Optional[str] = ..., id: _Optional[str] = ..., address: _Optional[str] = ..., ttrpc_address: _Optional[str] = ..., socket: _Optional[str] = ..., bundle: _Optional[str] = ..., version: _Optional[str] = ..., started_at_ns: _Optional[int] = ..., parent_pid: _Optional[int] = ...) -> None: ...

class Container(_message.Message):
    __slots__ = ("id", "bundle", "processes")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    id: str
    bundle: str
    processes: _containers.RepeatedCompositeFieldContainer[Process]
    def __init__(self, id: _Optional[str] = ..., bundle: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[Process, _Mapping]]] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("id", "init", "pid", "status", "exited", "exit_status", "exited_at_ns", "terminal", "stdin", "stdout", "stderr", "oom_killed")
    ID_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXITED_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_NS_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    id: str
    init: bool
    pid: int
    status: str
    exited: bool
    exit_status: int
    exited_at_ns: int
    terminal: bool
    stdin: str
    stdout: str
    stderr: str
    oom_killed: bool
    def __init__(self, id: _Optional[str] = ..., init: _Optional[bool] = ..., pid: _Optional[int] = ..., status: _Optional[str] = ..., exited: _Optional[bool] = ..., exit_status: _Optional[int] = ..., exited_at_ns: _Optional[int] = ..., terminal: _Optional[bool] = ..., stdin: _Optional[str] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., oom_killed: _Optional[bool] = ...) -> None: ...

class DebugRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DebugResponse(_message.Message):
    __slots__ = ("dump",)
    DUMP_FIELD_NUMBER: _ClassVar[int]
    dump: str
    def __init__(self, dump: _Optional[str] = ...) -> None: ...
