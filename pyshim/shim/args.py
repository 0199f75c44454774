"""The shim's command line as containerd writes it: Go `flag` style, action word last.

Single-dash long flags (`-namespace default`), also `--flag` and `-flag=value`; booleans take no
value; parsing stops at the first non-flag word, the action. Imports nothing heavy.
"""

from __future__ import annotations

_STRING_FLAGS = {
    "namespace", "id", "address", "publish-binary", "bundle", "socket", "debug-socket",
}
_BOOL_FLAGS = {"debug", "v", "version", "info", "h", "help"}

#: containerd's shim flag set (pkg/shim's parseFlags, as `containerd-shim-runc-v2 -h` prints it):
#: name -> (Go type word, or "" for a boolean; usage).
FLAG_USAGE = {
    "address": ("string", "grpc address back to main containerd"),
    "bundle": ("string", "path to the bundle if not workdir"),
    "debug": ("", "enable debug output in logs"),
    "debug-socket": ("string", "debug socket path to serve"),
    "id": ("string", "id of the task"),
    "info": ("", "get the option protobuf from stdin, print the shim info protobuf to stdout, "
                 "and exit"),
    "namespace": ("string", "namespace that owns the shim"),
    # pyshim publishes over TTRPC_ADDRESS (as containerd 2.x's shims do): carried, not run.
    "publish-binary": ("string", "path to publish binary (used for publishing events)"),
    "socket": ("string", "socket path to serve"),
    "v": ("", "show the shim version and exit"),
}

ACTIONS = (
    ("start", "start a shim daemon for the task (or join its group's), print its address"),
    ("delete", "clean up after a task whose shim is gone; print its exit status"),
)


def usage(program: str) -> str:
    """What Go's flag package prints for -h, plus the actions."""
    lines = [f"Usage of {program}:"]
    for name, (kind, text) in sorted(FLAG_USAGE.items()):
        if not kind and len(name) == 1:
            lines.append(f"  -{name}\t{text}")
        else:
            lines.append(f"  -{name}{' ' + kind if kind else ''}\n    \t{text}")
    lines.append(f"\nusage: {program} [flags] start|delete")
    lines += [f"  {name:<7} {text}" for name, text in ACTIONS]
    lines.append("With -info or -v no action is needed. `pyshim info` prints -info readably.")
    return "\n".join(lines)


class UsageError(ValueError):
    """A command line we cannot run; the message says what is wrong."""


class ShimArgs:
    """The parsed flags (a plain class: dataclasses would cost `start` ~10 ms of imports)."""

    __slots__ = ("action", "address", "bundle", "debug", "help", "id", "info", "namespace",
                 "publish_binary", "socket", "version")

    def __init__(
        self,
        *,
        namespace: str = "",
        id: str = "",
        address: str = "",
        publish_binary: str = "",
        bundle: str = "",
        socket: str = "",
        debug: bool = False,
        version: bool = False,
        info: bool = False,
        help: bool = False,
        action: str = "",
    ) -> None:
        self.help = help
        self.namespace = namespace
        self.id = id
        self.address = address
        self.publish_binary = publish_binary
        self.bundle = bundle
        self.socket = socket
        self.debug = debug
        self.version = version
        self.info = info
        self.action = action

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ShimArgs({fields})"


def parse(argv: list[str]) -> ShimArgs:
    values: dict[str, str | bool] = {}
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            index += 1
            break
        if not word.startswith("-") or word == "-":
            break
        name, has_value, value = word.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            values[name] = value.lower() not in ("false", "0") if has_value else True
        elif name in _STRING_FLAGS:
            if not has_value:
                index += 1
                if index >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[index]
            values[name] = value
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
        index += 1
    rest = argv[index:]
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments after the action: {' '.join(rest[1:])}")
    return ShimArgs(
        namespace=str(values.get("namespace", "")),
        id=str(values.get("id", "")),
        address=str(values.get("address", "")),
        publish_binary=str(values.get("publish-binary", "")),
        bundle=str(values.get("bundle", "")),
        socket=str(values.get("socket", "")),
        debug=bool(values.get("debug", False)),
        version=bool(values.get("v", False) or values.get("version", False)),
        info=bool(values.get("info", False)),
        help=bool(values.get("h", False) or values.get("help", False)),
        action=rest[0] if rest else "",
    )
