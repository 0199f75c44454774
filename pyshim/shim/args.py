"""The shim's command line as containerd writes it: Go `flag` style, action word last.

Single-dash long flags (`-namespace default`), also `--flag` and `-flag=value`; booleans take no
value; parsing stops at the first non-flag word, the action. Imports nothing heavy.
"""

from __future__ import annotations

_STRING_FLAGS = {
    "namespace", "id", "address", "publish-binary", "bundle", "socket", "debug-socket",
}
_BOOL_FLAGS = {"debug", "v", "version", "info"}


class UsageError(ValueError):
    """A command line we cannot run; the message says what is wrong."""


class ShimArgs:
    """The parsed flags (a plain class: dataclasses would cost `start` ~10 ms of imports)."""

    __slots__ = ("action", "address", "bundle", "debug", "id", "info", "namespace",
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
        action: str = "",
    ) -> None:
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
        action=rest[0] if rest else "",
    )
