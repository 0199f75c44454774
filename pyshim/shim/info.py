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


def info(stdin: bytes) -> int:
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
    sys.stdout.buffer.write(reply.SerializeToString())
    sys.stdout.buffer.flush()
    return 0
