"""What an operator sees from the three commands, run through the checkout's launchers (real
processes): `pyshim --help`, `containerd-shim-pyshim-v1 -h/--help`, `pyshim info` and `-info`
(binary protobuf to a pipe, text to a terminal), `pyshim image|rootfs busybox`."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tarfile
from pathlib import Path

import pytest

from pyshim.main import COMMANDS
from pyshim.protos.containerd.types import introspection_pb2
from pyshim.shim.args import FLAG_USAGE, parse

BIN = Path(__file__).resolve().parents[2] / "bin"
RUNTIME_NAME = "io.containerd.pyshim.v1"
GO_SHIM_FLAGS = ("address", "bundle", "debug", "debug-socket", "id", "info", "namespace",
                 "publish-binary", "socket", "v")


def run(command: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / command), *args], input=stdin, capture_output=True,
                          timeout=60, check=False)


def test_pyshim_help_lists_each_command_on_one_line() -> None:
    result = run("pyshim", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    listed = [line.split()[0] for line in text.split("Commands:\n")[1].split("\n\n")[0]
              .splitlines()]
    assert listed == [name for name, _, _ in COMMANDS]
    assert "shim" not in listed
    assert "containerd-shim-pyshim-v1 --help" in text and "README.md" in text
    assert "sans-IO" not in text and "lean" not in text        # no developer notes
    assert run("pyshim", "-h").stdout == result.stdout


def test_pyshim_unknown_command_points_to_help() -> None:
    result = run("pyshim", "frobnicate")
    assert result.returncode == 2
    assert b"pyshim --help" in result.stderr


@pytest.mark.parametrize("flag", ["-h", "--help", "-help"])
def test_shim_help_lists_go_flags_and_actions(flag: str) -> None:
    result = run("containerd-shim-pyshim-v1", flag)
    assert result.returncode == 0
    text = result.stderr.decode()                # Go's flag package writes usage to stderr
    assert text.startswith("Usage of containerd-shim-pyshim-v1:\n")
    assert sorted(FLAG_USAGE) == sorted(GO_SHIM_FLAGS)
    for name in GO_SHIM_FLAGS:
        assert f"\n  -{name}" in text, name
    assert "\n  -namespace string\n    \tnamespace that owns the shim\n" in text
    assert "\n  -v\tshow the shim version and exit\n" in text
    assert "start|delete" in text and "\n  start " in text and "\n  delete " in text
    assert "not defined" not in text


def test_each_listed_shim_flag_is_accepted_by_the_parser() -> None:
    for name, (kind, _) in FLAG_USAGE.items():
        argv = [f"-{name}", "x"] if kind else [f"-{name}"]
        parse([*argv, "start"])


def test_info_to_a_pipe_is_the_protobuf() -> None:
    result = run("containerd-shim-pyshim-v1", "-info")
    assert result.returncode == 0, result.stderr
    reply = introspection_pb2.RuntimeInfo.FromString(result.stdout)
    assert reply.name == RUNTIME_NAME


def test_pyshim_info_is_readable_and_matches_the_protobuf() -> None:
    reply = introspection_pb2.RuntimeInfo.FromString(
        run("containerd-shim-pyshim-v1", "-info").stdout)
    result = run("pyshim", "info")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert f"name: {RUNTIME_NAME}\n" in text
    assert f"version: {reply.version.version}\n" in text
    if reply.HasField("features"):             # runc answered `runc features`
        features = text.split("):\n", 1)[1]
        assert json.loads(features) == json.loads(reply.features.value)


def test_info_to_a_terminal_is_text() -> None:
    primary, secondary = pty.openpty()
    try:
        process = subprocess.run([str(BIN / "containerd-shim-pyshim-v1"), "-info"],
                                 stdin=secondary, stdout=secondary, stderr=subprocess.PIPE,
                                 timeout=60, check=False)
        os.close(secondary)
        secondary = -1
        output = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:                      # EIO: the writer side is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert process.returncode == 0, process.stderr
    assert output.startswith(f"name: {RUNTIME_NAME}\r\n".encode()), output[:200]


def test_rootfs_busybox_links_are_relative_and_resolve_inside(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("needs /bin/busybox (busybox-static)")
    root = tmp_path / "rootfs"
    result = run("pyshim", "rootfs", "busybox", str(root))
    assert result.returncode == 0, result.stderr
    links = [path for path in root.rglob("*") if path.is_symlink()]
    assert {"bin/sh", "bin/ls", "usr/bin/env", "sbin/init"} <= {
        str(path.relative_to(root)) for path in links}
    for link in links:
        target = os.readlink(link)
        assert not target.startswith("/"), (link, target)
        assert link.resolve() == (root / "bin" / "busybox").resolve(), link
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_image_busybox_writes_an_importable_layout(tmp_path: Path) -> None:
    if not Path("/bin/busybox").exists():
        pytest.skip("needs /bin/busybox (busybox-static)")
    archive = tmp_path / "busybox.tar"
    result = run("pyshim", "image", "busybox", str(archive), "--name", "example.com/bb:1")
    assert result.returncode == 0, result.stderr
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["io.containerd.image.name"] == "example.com/bb:1"


@pytest.mark.parametrize("args", [[], ["busybox"], ["alpine", "x"], ["busybox", "x", "--bad"]])
def test_image_and_rootfs_refuse_bad_usage(args: list[str]) -> None:
    for command in ("image", "rootfs"):
        result = run("pyshim", command, *args)
        assert result.returncode == 2, (command, args)
        assert b"usage: pyshim image busybox" in result.stdout + result.stderr


def test_the_other_names_source_the_one_launcher() -> None:
    for name in ("containerd-shim-pyshim-v1", "pyshim-conmon"):
        assert '. "${pyshim_self%/*}/pyshim"' in (BIN / name).read_text(), name


def test_launcher_through_a_symlink_elsewhere(tmp_path: Path) -> None:
    """As scripts/setup links them into /usr/local/bin: each name still answers as itself."""
    for name in ("pyshim", "containerd-shim-pyshim-v1", "pyshim-conmon"):
        (tmp_path / name).symlink_to(BIN / name)
    answers = {name: subprocess.run([str(tmp_path / name), *args], capture_output=True,
                                    text=True, timeout=60, check=True, cwd=tmp_path).stdout
               for name, args in (("pyshim", ["--version"]),
                                  ("containerd-shim-pyshim-v1", ["-v"]),
                                  ("pyshim-conmon", ["--version"]))}
    assert answers["pyshim"].startswith("pyshim ")
    assert answers["containerd-shim-pyshim-v1"].startswith(f"{RUNTIME_NAME}:\n  Version: ")
    assert answers["pyshim-conmon"].startswith("conmon version ")
