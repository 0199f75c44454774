"""Command-line entry points; each front end is imported only when chosen, so `start`,
`delete` and `--version` stay lean.

* `containerd-shim-pyshim-v1 [flags] start|delete` (and `-info`, `-v`, `-h`): `shim_main`;
* `pyshim COMMAND …`: `main`, dispatching through :data:`COMMANDS` (one line per command,
  which is also what `pyshim --help` lists).
"""

from __future__ import annotations

import os
import sys

from pyshim import __version__

# Not typing.TYPE_CHECKING: importing typing (re, enum, collections, functools …) cost every
# `start` and `delete` ~7 ms. Type checkers treat any constant of this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

RUNTIME_NAME = "io.containerd.pyshim.v1"


def shim_main(argv: list[str] | None = None) -> int:
    """containerd's view of us: Go-flag style arguments, action word last."""
    from pyshim.shim.args import UsageError, parse

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{RUNTIME_NAME}: {error}", file=sys.stderr)
        return 2
    if args.help:
        from pyshim.shim.args import usage

        # As Go's flag package does for -h: the usage on stderr, exit status 0.
        print(usage("containerd-shim-pyshim-v1"), file=sys.stderr)
        return 0
    if args.version:
        print(f"{RUNTIME_NAME}:\n  Version: {__version__}\n  Python: {sys.version.split()[0]}")
        return 0
    if args.info:
        from pyshim.shim.info import info

        # A terminal gets the readable form (`pyshim info`), a pipe the protobuf.
        return info(_read_stdin(), readable=os.isatty(1))
    if not args.namespace:
        print(f"{RUNTIME_NAME}: shim namespace cannot be empty", file=sys.stderr)
        return 1
    if args.action == "start":
        from pyshim.shim.start import StartError, start

        try:
            code = start(args, _read_stdin())
        except (StartError, OSError) as error:
            print(f"{RUNTIME_NAME}: {error}", file=sys.stderr)
            return 1
        # Everything is written and flushed; skip the interpreter's tear-down (~2 ms of
        # every container start).
        os._exit(code)
    if args.action == "delete":
        from pyshim.shim.delete import delete

        return delete(args)
    if args.action == "":
        return _serve_foreground(args)
    print(f"{RUNTIME_NAME}: unknown action {args.action!r} (expected start or delete)",
          file=sys.stderr)
    return 1


def _read_stdin() -> bytes:
    try:
        if os.isatty(0):
            return b""
        return sys.stdin.buffer.read()
    except (OSError, ValueError):
        return b""


def _serve_foreground(args: object) -> int:
    """No action: serve in the foreground on -socket (debugging; containerd never does it)."""
    import socket

    from pyshim.shim.args import ShimArgs
    from pyshim.shim.daemon import serve
    from pyshim.shim.start import DaemonConfig, bind_or_join

    assert isinstance(args, ShimArgs)
    if not args.socket:
        print(f"{RUNTIME_NAME}: no action given (start, delete) and no -socket to serve on",
              file=sys.stderr)
        return 1
    listener = bind_or_join(args.socket)
    if listener is None:
        print(f"{RUNTIME_NAME}: a shim already serves {args.socket}", file=sys.stderr)
        return 1
    config = DaemonConfig(
        namespace=args.namespace, id=args.id, address=args.address,
        ttrpc_address=os.environ.get("TTRPC_ADDRESS", ""), bundle=os.getcwd(),
        socket_path=args.socket, debug=args.debug,
    )
    return serve(config, socket.socket(fileno=listener.detach()))


#: `pyshim` commands: (name, one-line summary for `pyshim --help`, "module:function" taking
#: the words after the command). Add a command by appending one line.
COMMANDS: list[tuple[str, str, str]] = [
    ("run", "run one container in the foreground, without containerd (run --help)",
     "pyshim.run:run_main"),
    ("image", "make a busybox image archive for `ctr images import` (image --help)",
     "pyshim.image:image_main"),
    ("rootfs", "make a busybox rootfs directory for `ctr run --rootfs` (rootfs --help)",
     "pyshim.image:rootfs_main"),
    ("info", "what containerd-shim-pyshim-v1 -info reports, readably",
     "pyshim.shim.info:info_main"),
    ("ps", "list shims, their containers, processes, exit records, fork-servers (ps --help)",
     "pyshim.ops.cli:ps_main"),
    ("inspect", "one container in full: shim, bundle, processes, exits (inspect --help)",
     "pyshim.ops.cli:inspect_main"),
    ("debug", "a container's shim writes its task and thread stacks to its log (debug --help)",
     "pyshim.ops.cli:debug_main"),
    ("forkserver", "status or stop the warm fork-servers (forkserver --help)",
     "pyshim.ops.cli:forkserver_main"),
    ("version", "print pyshim's version", "pyshim.main:version_main"),
]

HELP_FOOTER = f"""\
Without a command, `pyshim` runs the busybox demo container (as ./scripts/demo does).

containerd runs the shim as `containerd-shim-pyshim-v1` (runtime {RUNTIME_NAME}; its flags:
containerd-shim-pyshim-v1 --help); podman and CRI-O run `pyshim-conmon`.
Read more: README.md ("Use it with containerd"), docs/ and shared/spec/ in the source tree."""


def help_text() -> str:
    width = max(len(name) for name, _, _ in COMMANDS)
    lines = [f"usage: pyshim COMMAND [ARGS...]\n\npyshim {__version__}: a containerd shim and "
             "container monitor in Python.\n\nCommands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, summary, _ in COMMANDS]
    return "\n".join(lines) + "\n\n" + HELP_FOOTER


def version_main(argv: list[str]) -> int:
    print(f"pyshim {__version__}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`pyshim COMMAND …` (see :data:`COMMANDS`); no command runs the demo."""
    words = sys.argv[1:] if argv is None else argv
    if not words:
        words = ["run"]
    if words[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    if words[0] in ("--version", "-V"):
        return version_main(words[1:])
    for name, _, target in COMMANDS:
        if words[0] == name:
            from importlib import import_module

            module, function = target.split(":")
            handler: Callable[[list[str]], int] = getattr(import_module(module), function)
            return handler(words[1:])
    print(f"pyshim: unknown command {words[0]!r} (pyshim --help lists the commands)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
