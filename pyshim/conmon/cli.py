"""`pyshim-conmon` command line: what is answered before any monitoring starts.

`--version` is what podman runs before every command and CRI-O at start-up (spec §2.2); the
`bin/pyshim-conmon` wrapper answers the plain `--version` call itself without starting Python,
and this module answers every other form of it. Keep imports here minimal.
"""

from __future__ import annotations

import sys

from pyshim import __version__

#: The conmon behaviour level we implement (spec §2.2): podman and CRI-O parse this number.
CONMON_VERSION = "2.1.6"


def version_text() -> str:
    return f"conmon version {CONMON_VERSION}\ncommit: pyshim-{__version__}\n"


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    options = words[: words.index("--")] if "--" in words else words
    if any(word == "--version" or word.startswith("--version=") for word in options):
        sys.stdout.write(version_text())
        return 0
    print("pyshim-conmon: the monitor is not implemented yet, only --version is "
          "(use conmon for podman and CRI-O meanwhile)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
