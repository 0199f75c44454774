"""Busybox images and rootfs directories made offline, for ``ctr images import`` / ``--rootfs``.

``pyshim image busybox ARCHIVE`` and ``pyshim rootfs busybox DIR`` (:func:`main`): no registry is
needed (nor reachable from the test machines; the CRI tests build their images here too and
import them into the ``k8s.io`` namespace). The archive is an OCI image
layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md) in a tar:

* ``oci-layout``: ``{"imageLayoutVersion": "1.0.0"}``;
* ``blobs/sha256/<hex>``: one gzip-compressed layer tar (``/bin/busybox`` from busybox-static, a
  *relative* symlink per applet, an empty ``/tmp``), the image config and the manifest;
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
import shutil
import subprocess
import sys
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


def applet_links(applets: Sequence[str]) -> dict[str, str]:
    """``{path in the rootfs: relative link target}`` for each applet: a bare name goes to
    ``bin/``, a path (``usr/bin/env``, as ``busybox --list-full`` prints) stays where it is.
    Targets are relative (``../../bin/busybox``), so they resolve inside the container, unlike
    the absolute ones of ``busybox --install -s``.
    """
    links: dict[str, str] = {}
    for applet in applets:
        path = applet.strip("/") if "/" in applet else f"bin/{applet}"
        if not path or path == "bin/busybox" or ".." in path.split("/"):
            continue
        same_dir = path.count("/") == 1 and path.startswith("bin/")
        links[path] = "busybox" if same_dir else "../" * path.count("/") + "bin/busybox"
    return links


def all_applets(busybox: Path) -> list[str]:
    """Every applet of ``busybox`` with its usual directory (``busybox --list-full``)."""
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    # `linuxrc` (an init for initramfs) would land in the root directory: not wanted.
    return [line for line in listing.split() if "/" in line]


def _parents(paths: Sequence[str]) -> list[str]:
    directories = {"bin", "tmp"}
    for path in paths:
        parts = path.split("/")[:-1]
        directories.update("/".join(parts[:end]) for end in range(1, len(parts) + 1))
    return sorted(directories)


def layer_tar(busybox: Path, applets: Sequence[str] = APPLETS) -> bytes:
    """The uncompressed layer: ``bin/busybox``, a relative symlink per applet, ``tmp/``."""
    binary = busybox.read_bytes()
    links = applet_links(applets)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in _parents(list(links)):
            mode = 0o1777 if directory == "tmp" else 0o755
            tar.addfile(_tar_info(directory, tarfile.DIRTYPE, mode))
        tar.addfile(
            _tar_info("bin/busybox", tarfile.REGTYPE, 0o755, len(binary)), io.BytesIO(binary)
        )
        for path, target in sorted(links.items()):
            link = _tar_info(path, tarfile.SYMTYPE, 0o777)
            link.linkname = target
            tar.addfile(link)
    return buffer.getvalue()


def build_rootfs(directory: Path, busybox: Path = Path("/bin/busybox"),
                 applets: Sequence[str] | None = None) -> Path:
    """Make ``directory`` a busybox rootfs for ``ctr run --rootfs``: ``bin/busybox`` (a copy),
    a relative symlink per applet (all of them by default), ``tmp``. Returns ``directory``."""
    links = applet_links(all_applets(busybox) if applets is None else applets)
    for parent in _parents(list(links)):
        (directory / parent).mkdir(parents=True, exist_ok=True)
    (directory / "tmp").chmod(0o1777)
    shutil.copy2(busybox, directory / "bin" / "busybox")
    for path, target in links.items():
        link = directory / path
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return directory


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
            "history": [{"created_by": "pyshim.image"}],
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


USAGE = """usage: pyshim image busybox ARCHIVE [--name NAME]
         an OCI image archive, for `ctr images import ARCHIVE`
       pyshim rootfs busybox DIR
         a rootfs directory, for `ctr run --rootfs DIR`

Both use the static busybox of Debian's busybox-static (/bin/busybox; --busybox PATH for
another) and need no registry. NAME defaults to docker.io/library/busybox:latest."""

DEFAULT_IMAGE_NAME = "docker.io/library/busybox:latest"


def main(command: str, argv: Sequence[str]) -> int:
    """``pyshim image|rootfs busybox TARGET [--name NAME] [--busybox PATH]``."""
    words = list(argv)
    if not words or words[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if words else 2
    options = {"--name": DEFAULT_IMAGE_NAME, "--busybox": "/bin/busybox"}
    positional: list[str] = []
    while words:
        word = words.pop(0)
        if word in options and words:
            options[word] = words.pop(0)
        elif word.startswith("-"):
            print(f"pyshim {command}: unknown option {word!r}\n{USAGE}", file=sys.stderr)
            return 2
        else:
            positional.append(word)
    if len(positional) != 2 or positional[0] != "busybox":
        print(f"pyshim {command}: expected `busybox TARGET`\n{USAGE}", file=sys.stderr)
        return 2
    busybox, target = Path(options["--busybox"]), Path(positional[1])
    try:
        if command == "image":
            archive = build_image_archive(target, options["--name"], busybox=busybox,
                                          applets=all_applets(busybox))
            print(f"{archive.path}: {archive.name} ({archive.manifest_digest})")
        else:
            build_rootfs(target, busybox)
            print(f"{target}: busybox rootfs")
    except (OSError, subprocess.SubprocessError) as error:
        print(f"pyshim {command}: {error}", file=sys.stderr)
        return 1
    return 0


def image_main(argv: list[str]) -> int:
    """``pyshim image busybox ARCHIVE``."""
    return main("image", argv)


def rootfs_main(argv: list[str]) -> int:
    """``pyshim rootfs busybox DIR``."""
    return main("rootfs", argv)
