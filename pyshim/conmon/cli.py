"""`pyshim-conmon` command line: conmon 2.1.6's parse, `--help`, `--version`, validation, then
the launch (spec §2, §4.1).

`--version` is what podman runs before every command and CRI-O at start-up (spec §2.2); the
`bin/pyshim-conmon` wrapper answers the plain `--version` call itself without starting Python,
and this module answers every other form of it after the parse (a bad option still fails
first, as with conmon). Keep the imports up to that answer minimal: `args` only.
"""

from __future__ import annotations

import sys

from pyshim import __version__

TYPE_CHECKING = False  # not typing's: importing typing would cost `--version` ~7 ms
if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from pyshim.conmon import args
    from pyshim.conmon.daemon import Daemon

    MutableEnviron = MutableMapping[str, str]

#: The conmon behaviour level we implement (spec §2.2): podman and CRI-O parse this number.
CONMON_VERSION = "2.1.6"
#: bin/pyshim sets it to `=<value>` (LC_CTYPE was set) or `` (unset): Python's C-locale coercion
#: (PEP 538) sets LC_CTYPE=C.UTF-8 for itself and every child, and conmon's children (runtime,
#: exit command) and its locale-dependent parse must see the caller's environment instead.
CALLER_LC_CTYPE = "PYSHIM_CALLER_LC_CTYPE"


def version_text() -> str:
    return f"conmon version {CONMON_VERSION}\ncommit: pyshim-{__version__}\n"


def main(argv: list[str] | None = None) -> int:
    from pyshim.conmon import args

    words = sys.argv[1:] if argv is None else argv
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    raw = [word.encode(encoding, errors) for word in words]  # os.fsencode, without os
    try:
        values = args.parse(raw, locale_codeset)
    except args.HelpRequested:
        return _write(1, args.glib_print(args.help_text(), locale_codeset()), 0)
    except args.ParseError as error:
        # 2.1.6 prints this on stdout (>= 2.1.8: stderr); podman only looks at the status.
        line = b"conmon: option parsing failed: " + error.reason + b"\n"
        return _write(1, args.glib_print(line, locale_codeset()), 1)
    if values.get("version"):
        sys.stdout.write(version_text())
        return 0
    if values.get("cid") is None:
        return _write(2, b"conmon: Container ID not provided. Use --cid\n", 1)
    return _run(values, raw)


def _run(values: args.Values, argv: list[bytes]) -> int:
    import os

    from pyshim.conmon import launch, validate
    from pyshim.conmon.options import ConmonOptions

    restore_caller_environment(os.environ)
    inherited = launch.open_fds()
    try:
        config = validate.validate(ConmonOptions.from_values(values), validate.RealHost(),
                                   os.environ)
    except validate.ValidationError as error:
        return _write(2, error.line, 1)

    def hand_off() -> int | None:
        from pyshim.conmon import handoff

        path = handoff.server_path(os.environ)
        if path is None:
            return None
        pid = handoff.request_monitor(path, argv, os.environ, inherited, config.k8s_log_fd)
        if pid is None:
            handoff.launch_server(path)  # for the next launch; this one forks its own
        return pid

    return launch.launch(config, os.environ, inherited, run_monitor, hand_off)


def run_monitor(daemon: Daemon) -> int:
    """The monitor, in the daemon (forked here or by the monitor-server)."""
    from pyshim.conmon.monitor import run_monitor as monitor

    return monitor(daemon)


def restore_caller_environment(environ: MutableEnviron) -> None:
    """Undo Python's LC_CTYPE coercion using the launcher's note (nothing without it)."""
    note = environ.pop(CALLER_LC_CTYPE, None)
    if note is None:
        return
    if note.startswith("="):
        environ["LC_CTYPE"] = note[1:]
    else:
        environ.pop("LC_CTYPE", None)


_codeset: list[str] = []


def locale_codeset() -> str:
    """The codeset conmon runs in: it calls setlocale(LC_ALL, "") first thing, so it is the
    caller's locale if installed (else C, ASCII). Asked only for non-ASCII values or output."""
    if not _codeset:
        import _locale
        import os

        restore_caller_environment(os.environ)
        previous = _locale.setlocale(_locale.LC_ALL, None)
        try:
            _locale.setlocale(_locale.LC_ALL, "")
            _codeset.append(_locale.nl_langinfo(_locale.CODESET))
        except Exception:  # _locale.Error (typeshed lacks it): the locale is not installed
            _codeset.append("ANSI_X3.4-1968")
        finally:
            _locale.setlocale(_locale.LC_ALL, previous)
    return _codeset[0]


def _write(fd: int, data: bytes, status: int) -> int:
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    stream.buffer.write(data)
    stream.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
