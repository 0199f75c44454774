"""Runtime options decoding: unknown keys are refused, legacy containerd.linux.runc types read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyshim import options
from pyshim.options import InvalidOptions, RuncOptions
from pyshim.protos.containerd.linux.runc import runc_pb2
from pyshim.shim import daemonize, wire


def test_an_unknown_key_is_refused_naming_it_and_the_accepted_ones(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text('binary = "/usr/local/bin/runc"\n')
    with pytest.raises(InvalidOptions) as raised:
        options.load_config_file(str(config))
    message = str(raised.value)
    assert "'binary'" in message and str(config) in message
    assert "binary_name" in message and "runc_timeout" in message


def test_go_spellings_and_snake_case_are_accepted(tmp_path: Path) -> None:
    config = tmp_path / "runtime.toml"
    config.write_text('BinaryName = "/opt/runc"\nRoot = "/run/r"\nSystemdCgroup = true\n'
                      "io_uid = 7\n")
    assert options.load_config_file(str(config)) == RuncOptions(
        binary_name="/opt/runc", root="/run/r", systemd_cgroup=True, io_uid=7)


def test_an_unknown_key_in_a_json_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "runtime.json"
    config.write_text('{"binary_name": "/opt/runc", "TaskApiAddres": "x"}')
    with pytest.raises(InvalidOptions, match="unknown option 'TaskApiAddres'"):
        options.load_config_file(str(config))


def test_legacy_create_options_map_to_the_runc_options_fields() -> None:
    legacy = runc_pb2.CreateOptions(
        no_pivot_root=True, no_new_keyring=True, shim_cgroup="/pyshim/shim", io_uid=1000,
        io_gid=1001, criu_work_path="/w", criu_image_path="/i", open_tcp=True,
    )
    decoded = options.decode("containerd.linux.runc.CreateOptions", legacy.SerializeToString())
    assert decoded == RuncOptions(
        no_pivot_root=True, no_new_keyring=True, shim_cgroup="/pyshim/shim", io_uid=1000,
        io_gid=1001, criu_work_path="/w", criu_image_path="/i",
    )


def test_legacy_runc_options_name_the_binary_and_root() -> None:
    legacy = runc_pb2.RuncOptions(runtime="/opt/runc", runtime_root="/run/r",
                                  systemd_cgroup=True)
    decoded = options.decode("types.containerd.io/containerd.linux.runc.RuncOptions",
                             legacy.SerializeToString())
    assert decoded == RuncOptions(binary_name="/opt/runc", root="/run/r", systemd_cgroup=True)


def test_an_unknown_type_lists_every_understood_one() -> None:
    with pytest.raises(InvalidOptions) as raised:
        options.decode("example.Options", b"")
    for name in options.UNDERSTOOD_TYPES:
        assert name in str(raised.value)


def test_start_finds_shim_cgroup_by_field_number_in_both_types() -> None:
    """The lean start path reads shim_cgroup by number: 9 in CreateOptions, 3 in runc's."""
    from pyshim.protos.containerd.runc.v1 import options_pb2

    for type_url, message in (
        ("containerd.linux.runc.CreateOptions", runc_pb2.CreateOptions(shim_cgroup="/a/b")),
        ("containerd.runc.v1.Options", options_pb2.Options(shim_cgroup="/a/b")),
    ):
        field = daemonize.SHIM_CGROUP_FIELD[type_url]
        assert wire.strings(message.SerializeToString())[field] == "/a/b"
