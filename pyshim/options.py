"""Runtime options (spec §1.9): runc Options, runtimeoptions.v1.Options, containerd's legacy
containerd.linux.runc CreateOptions/RuncOptions, or none.

Owns decoding the options Any, the pyshim config file it may point to, and the options.json /
runtime files that let `delete` find runc without the daemon. Raises InvalidOptions for what
it cannot read; never guesses.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

# No protobuf or asyncio at import time; the option messages are decoded with lazy imports.
from pyshim import bundle as bundle_files
from pyshim.bundle import DEFAULT_BINARY, DEFAULT_ROOT
from pyshim.errors import InvalidInput

# Defaults of pyshim's own keys; the engine's own defaults (runtime.DEFAULT_TIMEOUT,
# io.spool.DEFAULT_SPOOL_MAX) are the same (tests/unit/test_layering.py checks), but the
# engine never imports this containerd options module.
DEFAULT_RUNC_TIMEOUT = 120.0
DEFAULT_SPOOL_MAX = 16 * 1024 * 1024


class InvalidOptions(InvalidInput, ValueError):
    """Runtime options we cannot use; the message says which and why."""


RUNC_OPTIONS = "containerd.runc.v1.Options"
RUNTIME_OPTIONS = "runtimeoptions.v1.Options"
LEGACY_RUNC_OPTIONS = "containerd.linux.runc.RuncOptions"
LEGACY_CREATE_OPTIONS = "containerd.linux.runc.CreateOptions"
UNDERSTOOD_TYPES = (RUNC_OPTIONS, RUNTIME_OPTIONS, LEGACY_CREATE_OPTIONS, LEGACY_RUNC_OPTIONS)


@dataclass(frozen=True, slots=True)
class RuncOptions:
    """The runc Options fields pyshim uses (zero values = defaults)."""

    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    binary_name: str = ""
    root: str = ""
    criu_path: str = ""
    systemd_cgroup: bool = False
    criu_image_path: str = ""
    criu_work_path: str = ""
    # pyshim's own keys (config files only; 0 = default): seconds before a hung runc command
    # is killed, bytes of output held per stream while a FIFO has no reader.
    runc_timeout: float = 0.0
    output_spool_max: int = 0

    @property
    def binary(self) -> str:
        return self.binary_name or DEFAULT_BINARY

    @property
    def runc_timeout_seconds(self) -> float:
        return self.runc_timeout if self.runc_timeout > 0 else DEFAULT_RUNC_TIMEOUT

    @property
    def spool_max_bytes(self) -> int:
        return self.output_spool_max if self.output_spool_max > 0 else DEFAULT_SPOOL_MAX

    def runc_root(self, namespace: str) -> str:
        return os.path.join(self.root or DEFAULT_ROOT, namespace)

    def to_json(self) -> str:
        """Go-style: snake_case keys, zero values omitted."""
        return json.dumps({key: value for key, value in asdict(self).items() if value})

    @classmethod
    def accepted_keys(cls) -> list[str]:
        return [field.name for field in fields(cls)]

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str) -> RuncOptions:
        """Keys in snake_case or Go's spelling (BinaryName, Root); an unknown key is refused,
        so that a misspelt `binary = "…"` does not silently run the default runc."""
        known = set(cls.accepted_keys())
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = _snake(key)
            if name not in known:
                raise InvalidOptions(
                    f"{source}: unknown option {key!r} (accepted: {', '.join(sorted(known))}; "
                    "Go spellings such as BinaryName work too)"
                )
            expected = type(getattr(cls(), name))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (
                    expected in (int, float) and isinstance(value, bool)):
                raise InvalidOptions(
                    f"{source}: option {key} must be a {expected.__name__}, got {value!r}"
                )
            values[name] = value
        return cls(**values)


def _snake(key: str) -> str:
    # TOML tables in containerd's config use Go field names (BinaryName, SystemdCgroup).
    if "_" in key or key.islower():
        return key
    out = ""
    for index, char in enumerate(key):
        if char.isupper() and index and not key[index - 1].isupper():
            out += "_"
        out += char.lower()
    return out


def _same_named_fields(message: Any) -> RuncOptions:
    """RuncOptions from every field of a protobuf message that RuncOptions has by name
    (runc v1 Options and the legacy CreateOptions use runc-v2's field names)."""
    accepted = set(RuncOptions.accepted_keys())
    return RuncOptions(**{
        field.name: getattr(message, field.name)
        for field in message.DESCRIPTOR.fields if field.name in accepted
    })


def decode(type_url: str, value: bytes) -> RuncOptions:
    """Options from an Any's parts; an empty type URL means none (as runc-v2 treats it)."""
    if not type_url:
        return RuncOptions()
    name = type_url.rsplit("/", 1)[-1]
    if name == RUNC_OPTIONS:
        from pyshim.protos.containerd.runc.v1 import options_pb2

        return _same_named_fields(options_pb2.Options.FromString(value))
    if name == LEGACY_CREATE_OPTIONS:
        from pyshim.protos.containerd.linux.runc import runc_pb2

        # The fields runc-v2's own Options share (the rest only matter for a restore).
        return _same_named_fields(runc_pb2.CreateOptions.FromString(value))
    if name == LEGACY_RUNC_OPTIONS:
        from pyshim.protos.containerd.linux.runc import runc_pb2

        legacy = runc_pb2.RuncOptions.FromString(value)
        return RuncOptions(
            binary_name=legacy.runtime, root=legacy.runtime_root,
            criu_path=legacy.criu_path, systemd_cgroup=legacy.systemd_cgroup,
        )
    if name == RUNTIME_OPTIONS:
        from pyshim.protos.runtimeoptions.v1 import api_pb2

        runtime_options = api_pb2.Options.FromString(value)
        if runtime_options.config_body:
            return _from_toml(runtime_options.config_body.decode(), "runtime options config_body")
        if runtime_options.config_path:
            return load_config_file(runtime_options.config_path)
        return RuncOptions()
    raise InvalidOptions(
        f"unsupported runtime options type {type_url!r} (pyshim understands "
        f"{', '.join(UNDERSTOOD_TYPES)})"
    )


def load_config_file(path: str) -> RuncOptions:
    """A pyshim config file: TOML (or JSON) with runc Options keys, e.g. binary_name = "…"."""
    try:
        with open(path, encoding="utf-8") as config:
            text = config.read()
    except OSError as error:
        raise InvalidOptions(f"runtime options config_path {path}: {error.strerror}") from error
    if path.endswith(".json"):
        try:
            return RuncOptions.from_mapping(json.loads(text), path)
        except ValueError as error:
            raise InvalidOptions(f"runtime options config_path {path}: {error}") from error
    return _from_toml(text, path)


def _from_toml(text: str, source: str) -> RuncOptions:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidOptions(f"{source}: {error}") from error
    return RuncOptions.from_mapping(data, source)


# ----------------------------------------------------------------------- persisted in bundle


def save(bundle: str, options: RuncOptions) -> None:
    """options.json and runtime, as runc-v2 writes them (for `delete`)."""
    bundle_files.write_runtime_options(bundle, options.to_json(), options.binary_name)
