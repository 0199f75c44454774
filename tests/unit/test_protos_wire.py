"""Wire vectors and descriptor names of the containerd protos, checked against the spec.

Byte vectors come from the spec (§1.9, §1.10.2, §1.10.3, §1.10.6, §2.7); full names matter
because they are the service names in ttrpc requests and the type URLs inside Any.
"""

from __future__ import annotations

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from pyshim.protos.cgroups.v1 import metrics_pb2 as cgroups_v1
from pyshim.protos.cgroups.v2 import metrics_pb2 as cgroups_v2
from pyshim.protos.containerd.events import task_pb2 as events
from pyshim.protos.containerd.runc.v1 import options_pb2 as runc_options
from pyshim.protos.containerd.runtime.bootstrap.v1 import bootstrap_pb2 as bootstrap
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as ttrpc_events
from pyshim.protos.containerd.services.events.v1 import events_pb2 as grpc_events
from pyshim.protos.containerd.task.v2 import shim_pb2 as task_v2
from pyshim.protos.containerd.task.v3 import shim_pb2 as task_v3
from pyshim.protos.containerd.types import introspection_pb2 as introspection
from pyshim.protos.containerd.types import mount_pb2 as mount
from pyshim.protos.containerd.types.task import task_pb2 as task_types
from pyshim.protos.runtimeoptions.v1 import api_pb2 as runtimeoptions

# §3.1: method names as used in ttrpc Request.method.
TASK_METHODS = [
    "State",
    "Create",
    "Start",
    "Delete",
    "Pids",
    "Pause",
    "Resume",
    "Checkpoint",
    "Kill",
    "Exec",
    "ResizePty",
    "CloseIO",
    "Update",
    "Wait",
    "Stats",
    "Connect",
    "Shutdown",
]

GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, "not exited" (§3.2)


def h(text: str) -> bytes:
    """Hex with spaces, as written in the spec."""
    return bytes.fromhex(text)


def assert_wire(msg: Message, expected: bytes) -> None:
    """msg serializes to exactly expected, and expected parses back to msg."""
    assert msg.SerializeToString(deterministic=True) == expected
    parsed = type(msg)()
    parsed.ParseFromString(expected)
    assert parsed == msg


# ---------------------------------------------------------------------------------------------
# Task API vectors (§2.7)


def test_delete_response_vector() -> None:
    msg = task_v2.DeleteResponse(
        pid=5678,
        exit_status=137,
        exited_at=timestamp_pb2.Timestamp(seconds=1700000000, nanos=123),
    )
    assert_wire(msg, h("08ae2c108901 1a080880e2cfaa06107b"))


def test_state_response_go_zero_time_vector() -> None:
    msg = task_v2.StateResponse(exited_at=timestamp_pb2.Timestamp(seconds=GO_ZERO_TIME))
    assert_wire(msg, h("52 0b 08 80 92 b8 c3 98 fe ff ff ff 01"))


def test_connect_response_vector() -> None:
    assert_wire(task_v2.ConnectResponse(shim_pid=1234, task_pid=5678), h("08 d2 09 10 ae 2c"))


def test_connect_request_vector() -> None:
    # Request.payload of the §2.7 Connect request: `1a 04 0a 02 63 31`.
    assert_wire(task_v2.ConnectRequest(id="c1"), h("0a 02 63 31"))


def test_update_task_request_annotations_are_a_map() -> None:
    msg = task_v2.UpdateTaskRequest(id="c1", annotations={"k": "v"})
    # field 3 = repeated {key = 1, value = 2} entry
    assert_wire(msg, h("0a 02") + b"c1" + h("1a 06 0a 01") + b"k" + h("12 01") + b"v")


def test_state_status_enum() -> None:
    assert [(v.name, v.number) for v in task_types.Status.DESCRIPTOR.values] == [
        ("UNKNOWN", 0),
        ("CREATED", 1),
        ("RUNNING", 2),
        ("STOPPED", 3),
        ("PAUSED", 4),
        ("PAUSING", 5),
    ]
    assert_wire(task_v2.StateResponse(status=task_types.STOPPED), h("20 03"))


# ---------------------------------------------------------------------------------------------
# Events (§2.7, §4.1)

TASK_EXIT_BYTES = (
    h("0a 02") + b"c1" + h("12 02") + b"c1" + h("18 ae 2c 20 03 2a 06 08 80 e2 cf aa 06")
)


def _task_exit() -> events.TaskExit:
    return events.TaskExit(
        container_id="c1",
        id="c1",
        pid=5678,
        exit_status=3,
        exited_at=timestamp_pb2.Timestamp(seconds=1700000000),
    )


def test_task_exit_vector() -> None:
    assert_wire(_task_exit(), TASK_EXIT_BYTES)


def test_forward_request_vector() -> None:
    event = any_pb2.Any(type_url="containerd.events.TaskExit", value=TASK_EXIT_BYTES)
    msg = ttrpc_events.ForwardRequest(
        envelope=ttrpc_events.Envelope(
            timestamp=timestamp_pb2.Timestamp(seconds=1700000000, nanos=5),
            namespace="default",
            topic="/tasks/exit",
            event=event,
        )
    )
    expected = (
        h("0a 55")
        + h("0a 08 08 80 e2 cf aa 06 10 05")
        + h("12 07")
        + b"default"
        + h("1a 0b")
        + b"/tasks/exit"
        + h("22 33 0a 1a")
        + b"containerd.events.TaskExit"
        + h("12 15")
        + TASK_EXIT_BYTES
    )
    assert_wire(msg, expected)


def test_publish_request_fields() -> None:
    event = any_pb2.Any(type_url="containerd.events.TaskOOM", value=h("0a 02") + b"c1")
    msg = grpc_events.PublishRequest(topic="/tasks/oom", event=event)
    expected = h("0a 0a") + b"/tasks/oom" + h("12 21 0a 19") + b"containerd.events.TaskOOM"
    assert_wire(msg, expected + h("12 04 0a 02") + b"c1")


# ---------------------------------------------------------------------------------------------
# Runtime options (§1.9) and the 2.x start / -info messages (§1.10)

RUNC_OPTIONS_ANY = (
    h("0a 1a")
    + b"containerd.runc.v1.Options"
    + h("12 32 32 13")
    + b"/usr/local/bin/runc"
    + h("3a 1b")
    + b"/run/containerd/runc-custom"
)


def test_runc_options_any_vector() -> None:
    opts = runc_options.Options(
        binary_name="/usr/local/bin/runc", root="/run/containerd/runc-custom"
    )
    msg = any_pb2.Any(type_url="containerd.runc.v1.Options", value=opts.SerializeToString())
    assert_wire(msg, RUNC_OPTIONS_ANY)
    assert len(RUNC_OPTIONS_ANY) == 80


def test_runc_options_field_numbers() -> None:
    fields = {f.name: f.number for f in runc_options.Options.DESCRIPTOR.fields}
    assert fields["criu_path"] == 8
    assert fields["systemd_cgroup"] == 9
    assert fields["task_api_version"] == 13


def test_bootstrap_params_vector() -> None:
    expected = (
        h("0a 02")
        + b"c1"
        + h("12 07")
        + b"default"
        + h("22 06")
        + b"v2.3.4"
        + h("2a 25")
        + b"/run/containerd/containerd.sock.ttrpc"
        + h("32 1f")
        + b"/run/containerd/containerd.sock"
        + h("3a 13")
        + b"/usr/bin/containerd"
        + h("4a 11")
        + b"/run/containerd/s"
    )
    assert len(expected) == 133
    msg = bootstrap.BootstrapParams(
        instance_id="c1",
        namespace="default",
        containerd_version="v2.3.4",
        containerd_ttrpc_address="/run/containerd/containerd.sock.ttrpc",
        containerd_grpc_address="/run/containerd/containerd.sock",
        containerd_binary="/usr/bin/containerd",
        socket_dir="/run/containerd/s",
    )
    assert_wire(msg, expected)


def test_bootstrap_params_debug_with_options() -> None:
    msg = bootstrap.BootstrapParams(
        log_level=bootstrap.LOG_LEVEL_DEBUG,
        extensions=[bootstrap.Extension(value=any_pb2.Any.FromString(RUNC_OPTIONS_ANY))],
    )
    assert_wire(msg, h("18 fc ff ff ff ff ff ff ff ff 01 42 52 0a 50") + RUNC_OPTIONS_ANY)
    assert_wire(
        bootstrap.BootstrapParams(log_level=bootstrap.LOG_LEVEL_TRACE),
        h("18 f8 ff ff ff ff ff ff ff ff 01"),
    )


def test_bootstrap_params_socket_dir_has_presence() -> None:
    absent = bootstrap.BootstrapParams.FromString(h("0a 02") + b"c1")
    assert not absent.HasField("socket_dir")
    empty = bootstrap.BootstrapParams(socket_dir="")
    assert empty.HasField("socket_dir")
    assert empty.SerializeToString() == h("4a 00")


def test_log_level_and_capability_enums() -> None:
    assert {v.name: v.number for v in bootstrap.LogLevel.DESCRIPTOR.values} == {
        "LOG_LEVEL_INFO": 0,
        "LOG_LEVEL_TRACE": -8,
        "LOG_LEVEL_DEBUG": -4,
        "LOG_LEVEL_WARN": 4,
        "LOG_LEVEL_ERROR": 8,
        "LOG_LEVEL_FATAL": 10,
        "LOG_LEVEL_PANIC": 12,
    }
    assert {v.name: v.number for v in bootstrap.Capability.DESCRIPTOR.values} == {
        "CAPABILITY_UNSPECIFIED": 0
    }


def test_bootstrap_result_vector() -> None:
    address = (
        "unix:///run/containerd/s/d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888"
    )
    msg = bootstrap.BootstrapResult(version=3, address=address, protocol="ttrpc")
    expected = h("08 03 12 59") + address.encode() + h("1a 05") + b"ttrpc"
    assert len(expected) == 100
    assert_wire(msg, expected)


def test_runtime_info_vector() -> None:
    msg = introspection.RuntimeInfo(
        name="io.containerd.pyshim.v1",
        version=introspection.RuntimeVersion(version="0.1.0"),
    )
    minimal = h("0a 17") + b"io.containerd.pyshim.v1" + h("12 07 0a 05") + b"0.1.0"
    assert len(minimal) == 34
    assert_wire(msg, minimal)

    msg.annotations["containerd.io/runtime-allow-mounts"] = "overlay"
    annotated = (
        minimal + h("2a 2d 0a 22") + b"containerd.io/runtime-allow-mounts" + h("12 07") + b"overlay"
    )
    assert len(annotated) == 81
    assert_wire(msg, annotated)


def test_mount_fields() -> None:
    msg = mount.Mount(type="bind", source="/a", target="/b", options=["rbind", "ro"])
    expected = (
        h("0a 04")
        + b"bind"
        + h("12 02")
        + b"/a"
        + h("1a 02")
        + b"/b"
        + h("22 05")
        + b"rbind"
        + h("22 02")
        + b"ro"
    )
    assert_wire(msg, expected)


def test_cgroups_v1_per_cpu_is_packed() -> None:
    msg = cgroups_v1.CPUUsage(per_cpu=[1, 2, 300])
    assert_wire(msg, h("22 04 01 02 ac 02"))


def test_cgroups_v2_metrics_field_3_is_reserved() -> None:
    fields = {f.number: f.name for f in cgroups_v2.Metrics.DESCRIPTOR.fields}
    assert fields == {
        1: "pids",
        2: "cpu",
        4: "memory",
        5: "rdma",
        6: "io",
        7: "hugetlb",
        8: "memory_events",
        9: "network",
    }


# ---------------------------------------------------------------------------------------------
# Service and type full names


def _methods(service: ServiceDescriptor) -> list[tuple[str, str, str]]:
    return [(m.name, m.input_type.full_name, m.output_type.full_name) for m in service.methods]


def test_task_services() -> None:
    v2 = task_v2.DESCRIPTOR.services_by_name["Task"]
    v3 = task_v3.DESCRIPTOR.services_by_name["Task"]
    assert v2.full_name == "containerd.task.v2.Task"
    assert v3.full_name == "containerd.task.v3.Task"
    assert [m.name for m in v2.methods] == TASK_METHODS
    assert _methods(v3) == _methods(v2)
    empty_replies = {
        m.name for m in v2.methods if m.output_type.full_name == "google.protobuf.Empty"
    }
    assert empty_replies == {
        "Pause",
        "Resume",
        "Checkpoint",
        "Kill",
        "Exec",
        "ResizePty",
        "CloseIO",
        "Update",
        "Shutdown",
    }
    assert (
        v2.methods_by_name["Create"].input_type.full_name == "containerd.task.v2.CreateTaskRequest"
    )


def test_events_services() -> None:
    forward = ttrpc_events.DESCRIPTOR.services_by_name["Events"]
    assert forward.full_name == "containerd.services.events.ttrpc.v1.Events"
    assert _methods(forward) == [
        ("Forward", "containerd.services.events.ttrpc.v1.ForwardRequest", "google.protobuf.Empty")
    ]
    publish = grpc_events.DESCRIPTOR.services_by_name["Events"]
    assert publish.full_name == "containerd.services.events.v1.Events"
    assert _methods(publish) == [
        ("Publish", "containerd.services.events.v1.PublishRequest", "google.protobuf.Empty")
    ]


def test_type_url_full_names() -> None:
    names: dict[type[Message], str] = {
        events.TaskCreate: "containerd.events.TaskCreate",
        events.TaskStart: "containerd.events.TaskStart",
        events.TaskExit: "containerd.events.TaskExit",
        events.TaskDelete: "containerd.events.TaskDelete",
        events.TaskExecAdded: "containerd.events.TaskExecAdded",
        events.TaskExecStarted: "containerd.events.TaskExecStarted",
        events.TaskOOM: "containerd.events.TaskOOM",
        events.TaskPaused: "containerd.events.TaskPaused",
        events.TaskResumed: "containerd.events.TaskResumed",
        events.TaskCheckpointed: "containerd.events.TaskCheckpointed",
        runc_options.Options: "containerd.runc.v1.Options",
        runc_options.CheckpointOptions: "containerd.runc.v1.CheckpointOptions",
        runc_options.ProcessDetails: "containerd.runc.v1.ProcessDetails",
        runtimeoptions.Options: "runtimeoptions.v1.Options",
        cgroups_v1.Metrics: "io.containerd.cgroups.v1.Metrics",
        cgroups_v2.Metrics: "io.containerd.cgroups.v2.Metrics",
        introspection.RuntimeInfo: "containerd.types.RuntimeInfo",
        bootstrap.BootstrapParams: "containerd.runtime.bootstrap.v1.BootstrapParams",
        bootstrap.BootstrapResult: "containerd.runtime.bootstrap.v1.BootstrapResult",
        task_types.ProcessInfo: "containerd.v1.types.ProcessInfo",
        mount.Mount: "containerd.types.Mount",
    }
    for cls, full_name in names.items():
        assert cls.DESCRIPTOR.full_name == full_name


def test_any_pack_cannot_produce_bare_type_urls() -> None:
    # Pitfall: Any.Pack always inserts a "/", even with an empty prefix, while containerd wants
    # the bare full name (Appendix B). Build the Any by hand from DESCRIPTOR.full_name instead.
    packed = any_pb2.Any()
    packed.Pack(_task_exit(), type_url_prefix="")
    assert packed.type_url == "/containerd.events.TaskExit"
    bare = any_pb2.Any(
        type_url=events.TaskExit.DESCRIPTOR.full_name, value=_task_exit().SerializeToString()
    )
    assert bare.type_url == "containerd.events.TaskExit"
