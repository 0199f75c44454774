"""A minimal, deterministic OCI image archive around the static busybox, for ``ctr images import``.

No registry is reachable from the test machines, so the CRI test cannot pull anything: it builds
its images here and imports them into the ``k8s.io`` namespace. The archive is an OCI image
layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md) in a tar:

* ``oci-layout``: ``{"imageLayoutVersion": "1.0.0"}``;
* ``blobs/sha256/<hex>``: one gzip-compressed layer tar (``/bin/busybox`` from busybox-static, a
  symlink per applet in :data:`APPLETS`, an empty ``/tmp``), the image config and the manifest;
* ``index.json``: one manifest descriptor annotated with the full image name
  (``io.containerd.image.name``, which ``ctr images import`` of containerd 1.6 uses verbatim as
  the image name) and its tag (``org.opencontainers.image.ref.name``, the OCI way, which ctr
  only uses together with ``--base-name``).

The image config's ``rootfs.diff_ids`` hold the digest of the *uncompressed* layer, the
manifest's layer descriptor the digest of the gzip blob. Every timestamp is zero and every owner
root, so the same busybox and arguments give byte-identical archives (and image ids).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"

#: Annotation holding the full image name; containerd's importer prefers it to the OCI tag.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
#: The OCI annotation for the tag of a manifest in an image layout.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: Applets linked to busybox in /bin (what the CRI test's commands use, and a few more).
APPLETS = (
    "cat", "echo", "env", "false", "id", "kill", "ls", "mkdir", "ps", "rm", "sh", "sleep",
    "test", "touch", "true", "wc",
)

#: PATH set in the image config (Docker's default, as real images have it).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    """This machine's architecture in Go/OCI spelling (``amd64`` for x86_64)."""
    machine = platform.machine()
    return _GO_ARCH.get(machine, machine)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _tar_info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(busybox: Path, applets: Sequence[str] = APPLETS) -> bytes:
    """The uncompressed layer: ``bin/busybox``, ``bin/<applet>`` -> ``busybox``, ``tmp/``."""
    binary = busybox.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info("bin", tarfile.DIRTYPE, 0o755))
        tar.addfile(
            _tar_info("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary)
        )
        for applet in sorted(set(applets)):
            link = _tar_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        tar.addfile(_tar_info("tmp", tarfile.DIRTYPE, 0o1777))
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    # mtime=0 and no file name in the header: the output depends on the input only.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as stream:
        stream.write(data)
    return buffer.getvalue()


@dataclass(frozen=True)
class ImageArchive:
    """What :func:`build_image_archive` wrote."""

    path: Path
    name: str
    #: Digest of the manifest (what ``ctr images ls`` shows as DIGEST).
    manifest_digest: str
    #: Digest of the config blob: the image id CRI reports (``ImageStatus().image.id``).
    config_digest: str
    #: Digest of the uncompressed layer (``rootfs.diff_ids[0]``).
    diff_id: str


def build_image_archive(
    path: Path,
    name: str,
    *,
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = ("sh",),
    busybox: Path = Path("/bin/busybox"),
    applets: Sequence[str] = APPLETS,
) -> ImageArchive:
    """Write an OCI image layout tar for image ``name`` (a full reference such as
    ``docker.io/library/busybox:1.36``) to ``path``; the config has ``Entrypoint``/``Cmd`` and
    :data:`DEFAULT_PATH`. ``busybox`` must be statically linked.
    """
    layer = layer_tar(busybox, applets)
    diff_id = _sha256(layer)
    layer_blob = _gzip(layer)
    container_config: dict[str, Any] = {"Env": [DEFAULT_PATH]}
    if entrypoint:
        container_config["Entrypoint"] = list(entrypoint)
    if cmd:
        container_config["Cmd"] = list(cmd)
    config_blob = _canonical_json(
        {
            "architecture": host_architecture(),
            "os": "linux",
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "pyshim tests/e2e/cri/image.py"}],
        }
    )
    manifest_blob = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_CONFIG,
                "digest": _sha256(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {
                    "mediaType": MEDIA_TYPE_LAYER_GZIP,
                    "digest": _sha256(layer_blob),
                    "size": len(layer_blob),
                }
            ],
        }
    )
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index_blob = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_TYPE_MANIFEST,
                    "digest": _sha256(manifest_blob),
                    "size": len(manifest_blob),
                    "platform": {"architecture": host_architecture(), "os": "linux"},
                    "annotations": {ANNOTATION_IMAGE_NAME: name, ANNOTATION_REF_NAME: tag},
                }
            ],
        }
    )

    files: list[tuple[str, bytes]] = [
        ("oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"})),
        ("index.json", index_blob),
    ]
    for blob in sorted((layer_blob, config_blob, manifest_blob), key=_sha256):
        files.append((f"blobs/sha256/{_sha256(blob).removeprefix('sha256:')}", blob))
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_tar_info(directory, tarfile.DIRTYPE, 0o755))
        for member, data in files:
            tar.addfile(_tar_info(member, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return ImageArchive(
        path=path,
        name=name,
        manifest_digest=_sha256(manifest_blob),
        config_digest=_sha256(config_blob),
        diff_id=diff_id,
    )
