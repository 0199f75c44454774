"""`-info` (containerd 2.x): a serialized RuntimeInfo on stdout, nothing else (spec §1.10.6).

Echoes the options read from stdin and passes the OCI runtime's `features` JSON through; never
touches sockets or daemons.
"""

from __future__ import annotations

import subprocess
import sys

from pyshim import __version__
from pyshim.protos.containerd.types import introspection_pb2
from pyshim.shim.start import RUNTIME_NAME

FEATURES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"


def info(stdin: bytes, *, readable: bool = False) -> int:
    """`-info`: the RuntimeInfo protobuf on stdout (``readable``: as `pyshim info` prints it)."""
    from google.protobuf import any_pb2

    from pyshim.bundle import DEFAULT_BINARY
    from pyshim.options import InvalidOptions, RuncOptions, decode

    reply = introspection_pb2.RuntimeInfo(name=RUNTIME_NAME)
    reply.version.version = __version__
    options = RuncOptions()
    if stdin:
        given = any_pb2.Any.FromString(stdin)
        if given.type_url:
            reply.options.CopyFrom(given)
            try:
                options = decode(given.type_url, given.value)
            except InvalidOptions as error:
                print(f"{RUNTIME_NAME}: {error}", file=sys.stderr)
                return 1
    binary = options.binary_name or DEFAULT_BINARY
    try:
        features = subprocess.run(
            [binary, "features"], capture_output=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        features = b""
    if features:
        reply.features.type_url = FEATURES_TYPE_URL
        reply.features.value = features
    if readable:
        print(describe(reply))
        return 0
    sys.stdout.buffer.write(reply.SerializeToString())
    sys.stdout.buffer.flush()
    return 0


def describe(reply: introspection_pb2.RuntimeInfo) -> str:
    """RuntimeInfo for people: name, version, options, and the OCI runtime's features JSON."""
    import json

    lines = [f"name: {reply.name}", f"version: {reply.version.version}"]
    if reply.version.revision:
        lines.append(f"revision: {reply.version.revision}")
    lines.append(f"options: {reply.options.type_url or '(none given)'}")
    if reply.HasField("features"):
        lines.append(f"features ({reply.features.type_url}):")
        try:
            text = json.dumps(json.loads(reply.features.value), indent=2, sort_keys=True)
        except ValueError:
            text = repr(reply.features.value)
        lines += ["  " + line for line in text.splitlines()]
    else:
        lines.append("features: (the OCI runtime reported none)")
    return "\n".join(lines)


def info_main(argv: list[str]) -> int:
    """`pyshim info`: what `containerd-shim-pyshim-v1 -info` reports, readably (no options
    are read: the defaults, i.e. runc)."""
    if argv:
        print("usage: pyshim info\n  what containerd-shim-pyshim-v1 -info reports, readably",
              file=sys.stderr if argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv[0] in ("-h", "--help") else 2
    return info(b"", readable=True)
