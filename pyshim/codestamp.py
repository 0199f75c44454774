"""What identifies the installed code for the warm servers (containerd's fork-server, the conmon
monitor-server): a listing of every module's path, mtime and size, and the Python version.
Lean (their clients import it at every start): `os` and `sys` only; never hashes or caches.
"""

from __future__ import annotations

import os
import sys

#: The package's directory: every module of it counts (a server runs the engine's code too).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def code_listing(package_dir: str = PACKAGE_DIR) -> bytes:
    """Changes with any changed, added or removed module, and with the interpreter (the
    requests' marshal format and the pyc files depend on it)."""
    entries: list[str] = []
    pending = [package_dir]
    while pending:
        with os.scandir(pending.pop()) as scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(entry.path)
                elif entry.name.endswith((".py", ".so")):
                    info = entry.stat()
                    entries.append(f"{entry.path}:{info.st_mtime_ns}:{info.st_size}")
    entries.sort()
    entries.append(f"python {sys.hexversion:x}")
    return "\n".join(entries).encode()
