"""The protobuf-free codec used by `start` and `delete` agrees with protobuf itself."""

from __future__ import annotations

import contextlib

import pytest
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from pyshim.protos.containerd.runc.v1 import options_pb2
from pyshim.protos.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.shim import wire
from tests.conftest import FUZZ_INPUTS

# Spec §1.9: runc Options{binary_name, root} inside an Any, as containerd writes it on stdin.
SPEC_OPTIONS_ANY = bytes.fromhex(
    "0a1a" + b"containerd.runc.v1.Options".hex() + "1232"
    + "3213" + b"/usr/local/bin/runc".hex() + "3a1b" + b"/run/containerd/runc-custom".hex()
)


def test_decode_any_spec_vector() -> None:
    type_url, value = wire.decode_any(SPEC_OPTIONS_ANY)
    assert type_url == "containerd.runc.v1.Options"
    options = options_pb2.Options.FromString(value)
    assert (options.binary_name, options.root) == (
        "/usr/local/bin/runc", "/run/containerd/runc-custom")


def test_delete_response_matches_spec_bytes() -> None:
    # Spec §1.7: pid 17346, exit_status 137, exited_at as observed.
    observed = bytes.fromhex("08c28701108901" "1a0c08e6f18cd806" "10eea1bcdb02")
    message = shim_pb2.DeleteResponse.FromString(observed)
    assert wire.encode_delete_response(
        message.pid, message.exit_status, message.exited_at.seconds, message.exited_at.nanos
    ) == observed


def test_bootstrap_result_matches_spec_bytes() -> None:
    address = ("unix:///run/containerd/s/"
               "d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888")
    encoded = wire.encode_bootstrap_result(3, address)
    assert encoded[:2] == bytes.fromhex("0803")
    assert bootstrap_pb2.BootstrapResult.FromString(encoded) == bootstrap_pb2.BootstrapResult(
        version=3, address=address, protocol="ttrpc")
    assert len(encoded) == 100


@given(pid=st.integers(0, 2**32 - 1), status=st.integers(0, 2**32 - 1),
       seconds=st.integers(-62135596800, 253402300799), nanos=st.integers(0, 999_999_999))
def test_delete_response_round_trips_through_protobuf(
    pid: int, status: int, seconds: int, nanos: int
) -> None:
    FUZZ_INPUTS["shim wire: DeleteResponse"] += 1
    expected = shim_pb2.DeleteResponse(pid=pid, exit_status=status)
    expected.exited_at.seconds, expected.exited_at.nanos = seconds, nanos
    encoded = wire.encode_delete_response(pid, status, seconds, nanos)
    assert shim_pb2.DeleteResponse.FromString(encoded) == expected
    assert encoded == expected.SerializeToString()


@given(type_url=st.text(max_size=80), value=st.binary(max_size=200))
def test_decode_any_agrees_with_protobuf(type_url: str, value: bytes) -> None:
    FUZZ_INPUTS["shim wire: Any"] += 1
    data = any_pb2.Any(type_url=type_url, value=value).SerializeToString()
    assert wire.decode_any(data) == (type_url, value)


@given(st.binary(max_size=64))
def test_fields_never_crashes_on_garbage(data: bytes) -> None:
    FUZZ_INPUTS["shim wire: garbage"] += 1
    with contextlib.suppress(wire.WireError):
        list(wire.fields(data))


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63 - 1, -1, -62135596800])
def test_varint_matches_protobuf(value: int) -> None:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp(seconds=value)
    assert wire.encode_timestamp(value, 0) == stamp.SerializeToString()
