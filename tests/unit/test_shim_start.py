"""`start` decisions that need no process: argv parsing, stdin format, grouping, socket path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from pyshim.protos.containerd.runc.v1 import options_pb2
from pyshim.protos.containerd.runtime.bootstrap.v1 import bootstrap_pb2
from pyshim.shim.args import UsageError, parse
from pyshim.shim.start import group_id, read_start_input, socket_path

START_ARGV = ["-namespace", "default", "-address", "/run/containerd/containerd.sock",
              "-publish-binary", "/usr/bin/containerd", "-id", "c1", "start"]


def test_containerd_start_argv() -> None:
    args = parse(START_ARGV)
    assert (args.namespace, args.id, args.address, args.action) == (
        "default", "c1", "/run/containerd/containerd.sock", "start")
    assert args.publish_binary == "/usr/bin/containerd"
    assert not args.debug


def test_debug_flag_before_action_and_go_forms() -> None:
    args = parse(["--namespace=k8s.io", "-id", "x", "-debug", "-bundle", "/b", "delete"])
    assert (args.namespace, args.id, args.debug, args.bundle, args.action) == (
        "k8s.io", "x", True, "/b", "delete")


@pytest.mark.parametrize(("argv", "message"), [
    (["-bogus", "start"], "flag provided but not defined: -bogus"),
    (["-namespace"], "flag needs an argument: -namespace"),
    (["-namespace", "n", "start", "extra"], "unexpected arguments after the action: extra"),
])
def test_bad_argv(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_socket_path_spec_vector() -> None:
    # Spec §1.10.3: sha256("/run/containerd/containerd.sock/default/c1").
    assert socket_path("/run/containerd/s", "/run/containerd/containerd.sock", "default",
                       "c1") == (
        "/run/containerd/s/d25aa4ef11a84e954e74a5bcff06557d0b6ea8d0c00243896f29826694bbd888")


def test_group_id_annotations(tmp_path: Path) -> None:
    assert group_id(str(tmp_path), "c1") == "c1"  # no config.json
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"annotations": {"io.kubernetes.cri.sandbox-id": "pod"}}))
    assert group_id(str(tmp_path), "c1") == "pod"
    config.write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.sandbox-id": "pod", "io.containerd.runc.v2.group": "g"}}))
    assert group_id(str(tmp_path), "c1") == "g"
    config.write_text("{not json")
    assert group_id(str(tmp_path), "c1") == "c1"


def _runc_options_any() -> bytes:
    options = options_pb2.Options(binary_name="/usr/local/bin/runc",
                                  root="/run/containerd/runc-custom")
    return any_pb2.Any(type_url="containerd.runc.v1.Options",
                       value=options.SerializeToString()).SerializeToString()


def test_legacy_options_on_stdin() -> None:
    given = read_start_input(_runc_options_any(), parse(START_ARGV))
    assert not given.bootstrap
    assert given.options[0] == "containerd.runc.v1.Options"
    assert options_pb2.Options.FromString(given.options[1]).root == "/run/containerd/runc-custom"


def test_empty_stdin_means_no_options() -> None:
    given = read_start_input(b"", parse(START_ARGV))
    assert (given.bootstrap, given.options) == (False, ("", b""))


def test_bootstrap_params_spec_vector() -> None:
    # Spec §1.10.2, debug level and runc options in extensions.
    params = bootstrap_pb2.BootstrapParams(
        instance_id="c1", namespace="default", log_level=bootstrap_pb2.LOG_LEVEL_DEBUG,
        containerd_version="v2.3.4",
        containerd_ttrpc_address="/run/containerd/containerd.sock.ttrpc",
        containerd_grpc_address="/run/containerd/containerd.sock",
        containerd_binary="/usr/bin/containerd", socket_dir="/run/containerd/s",
    )
    params.extensions.add().value.ParseFromString(_runc_options_any())
    data = params.SerializeToString()
    assert data[:2] == bytes.fromhex("0a02")
    given = read_start_input(data, parse(START_ARGV))
    assert given.bootstrap and given.debug
    assert given.socket_dir == "/run/containerd/s"
    assert given.ttrpc_address == "/run/containerd/containerd.sock.ttrpc"
    assert given.options[0] == "containerd.runc.v1.Options"


def test_options_any_that_decodes_as_bootstrap_is_not_taken_for_one() -> None:
    # Spec §1.10.4 item 4: the weak "decodes" test misreads options; ids must match too.
    given = read_start_input(_runc_options_any(), parse(START_ARGV))
    assert not given.bootstrap


def test_bootstrap_for_another_id_is_treated_as_options() -> None:
    params = bootstrap_pb2.BootstrapParams(instance_id="other", namespace="default")
    given = read_start_input(params.SerializeToString(), parse(START_ARGV))
    assert not given.bootstrap


#: What `start` and `delete` must never import: each costs every container start or delete
#: milliseconds of a fresh interpreter (typing alone ~7 ms: re, enum, collections, functools).
HEAVY_MODULES = ("typing", "re", "enum", "dataclasses", "asyncio", "json", "hashlib",
                 "google.protobuf", "uvloop")


def test_start_and_delete_paths_import_nothing_heavy() -> None:
    code = (f"import sys; sys.path[:0] = {sys.path!r}; "
            "import pyshim.main, pyshim.shim.start, pyshim.shim.forkclient, pyshim.shim.delete; "
            f"print(' '.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == []
