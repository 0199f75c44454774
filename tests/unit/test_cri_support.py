"""The helpers of the CRI end-to-end test that need no containerd: the OCI image archive builder
and the reading of the deploy files (pyshim/image.py and tests/e2e/cri/kube.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pyshim.image import (
    ANNOTATION_IMAGE_NAME,
    MEDIA_TYPE_LAYER_GZIP,
    build_image_archive,
    host_architecture,
)
from tests.e2e.cri import api_pb2 as api
from tests.e2e.cri import kube


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _members(path: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            stream = tar.extractfile(member) if member.isfile() else None
            if stream is not None:
                members[member.name] = stream.read()
    return members


def _blob(members: dict[str, bytes], digest: str) -> bytes:
    data = members[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
    assert _sha256(data) == digest
    return data


def _json(data: bytes) -> Any:
    return json.loads(data)


@pytest.fixture
def fake_busybox(tmp_path: Path) -> Path:
    path = tmp_path / "busybox"
    path.write_bytes(b"\x7fELF not really busybox")
    return path


def test_image_archive_is_a_consistent_oci_layout(tmp_path: Path, fake_busybox: Path) -> None:
    archive = build_image_archive(
        tmp_path / "image.tar", "docker.io/pyshim/pause:test",
        entrypoint=["/bin/sleep"], cmd=["infinity"], busybox=fake_busybox,
    )
    members = _members(archive.path)
    assert _json(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [descriptor] = _json(members["index.json"])["manifests"]
    assert descriptor["digest"] == archive.manifest_digest
    assert descriptor["annotations"][ANNOTATION_IMAGE_NAME] == "docker.io/pyshim/pause:test"
    manifest = _json(_blob(members, archive.manifest_digest))
    assert manifest["config"]["digest"] == archive.config_digest
    config = _json(_blob(members, archive.config_digest))
    assert (config["os"], config["architecture"]) == ("linux", host_architecture())
    assert config["config"]["Entrypoint"] == ["/bin/sleep"]
    assert config["config"]["Cmd"] == ["infinity"]
    [layer] = manifest["layers"]
    assert layer["mediaType"] == MEDIA_TYPE_LAYER_GZIP
    uncompressed = gzip.decompress(_blob(members, layer["digest"]))
    # diff_ids name the uncompressed layer, the manifest the compressed blob.
    assert config["rootfs"]["diff_ids"] == [_sha256(uncompressed)] == [archive.diff_id]
    assert layer["digest"] != archive.diff_id
    tar_path = tmp_path / "layer.tar"
    tar_path.write_bytes(uncompressed)
    with tarfile.open(tar_path) as tar:
        entries = {member.name: member for member in tar.getmembers()}
    assert entries["bin/busybox"].mode == 0o755
    assert entries["bin/sh"].issym() and entries["bin/sh"].linkname == "busybox"
    assert entries["bin/sleep"].issym()
    assert all(member.mtime == 0 and member.uid == 0 for member in entries.values())


def test_image_archive_is_deterministic(tmp_path: Path, fake_busybox: Path) -> None:
    first = build_image_archive(tmp_path / "a.tar", "docker.io/x/y:1", busybox=fake_busybox)
    second = build_image_archive(tmp_path / "b.tar", "docker.io/x/y:1", busybox=fake_busybox)
    assert first.path.read_bytes() == second.path.read_bytes()
    other = build_image_archive(tmp_path / "c.tar", "docker.io/x/y:1", cmd=["true"],
                                busybox=fake_busybox)
    assert other.diff_id == first.diff_id
    assert other.config_digest != first.config_digest


@pytest.mark.parametrize(
    ("reference", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36"),
        ("registry.k8s.io/pause:3.6", "registry.k8s.io/pause:3.6"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("quay.io/a/b@sha256:" + "0" * 64, "quay.io/a/b@sha256:" + "0" * 64),
    ],
)
def test_normalize_image(reference: str, normalized: str) -> None:
    assert kube.normalize_image(reference) == normalized


def test_pod_yaml_becomes_kubelet_like_cri_configs(tmp_path: Path) -> None:
    pod = kube.load_pod()
    sandbox = kube.sandbox_config(pod, "uid-1", tmp_path, "/kubepods")
    assert sandbox.log_directory == str(tmp_path / f"{pod.namespace}_{pod.name}_uid-1")
    namespaces = sandbox.linux.security_context.namespace_options
    assert namespaces.network == (api.NODE if pod.host_network else api.POD)
    assert namespaces.pid == api.CONTAINER
    container = pod.containers[0]
    config = kube.container_config(pod, container, sandbox, attempt=2)
    assert config.log_path == f"{container.name}/2.log"
    assert list(config.command) == container.command
    assert list(config.args) == container.args
    assert config.image.image == kube.normalize_image(container.image)
    assert config.labels["io.kubernetes.pod.uid"] == "uid-1"


def test_cri_runtimes_reads_runtime_tables() -> None:
    text = (
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.a]\n'
        '  runtime_type = "io.containerd.a.v1"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.b]\n'
        '  runtime_type = "io.containerd.b.v2"\n'
    )
    assert kube.cri_runtimes(text) == {"a": "io.containerd.a.v1", "b": "io.containerd.b.v2"}
