"""Command-line entry points; each front end is imported only when chosen, so `start`,
`delete` and `--version` stay lean.

* `containerd-shim-pyshim-v1 [flags] start|delete` (and `-info`, `-v`): `shim_main`;
* `pyshim run …`, `pyshim shim …`, `pyshim --version`: `main`.
"""

from __future__ import annotations

import os
import sys

from pyshim import __version__

RUNTIME_NAME = "io.containerd.pyshim.v1"


def shim_main(argv: list[str] | None = None) -> int:
    """containerd's view of us: Go-flag style arguments, action word last."""
    from pyshim.shim.args import UsageError, parse

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{RUNTIME_NAME}: {error}", file=sys.stderr)
        return 2
    if args.version:
        print(f"{RUNTIME_NAME}:\n  Version: {__version__}\n  Python: {sys.version.split()[0]}")
        return 0
    if args.info:
        from pyshim.shim.info import info

        return info(sys.stdin.buffer.read())
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


def main(argv: list[str] | None = None) -> int:
    """`pyshim`: run (foreground container, demo), shim (the containerd shim), --version."""
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in ("--version", "-V", "version"):
        print(f"pyshim {__version__}")
        return 0
    if words and words[0] == "shim":
        return shim_main(words[1:])
    if not words or words[0] == "run":
        from pyshim.run import run_main

        return run_main(words[1:])
    if words[0] in ("-h", "--help", "help"):
        print(__doc__)
        print("usage: pyshim run [--bundle DIR | --rootfs DIR -- CMD…] | pyshim shim … | "
              "pyshim --version")
        return 0
    print(f"pyshim: unknown command {words[0]!r} (try: pyshim run, pyshim --version)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
