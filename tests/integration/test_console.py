"""The console socket runc sends a terminal to: its directory, and what a dead shim left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pyshim.io.console import ConsoleSocket


def _dead_pid() -> int:
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    assert not os.path.exists(f"/proc/{child.pid}")
    return child.pid


def test_a_new_console_socket_removes_dead_shims_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    stale = tmp_path / f"pyshim-pty-{_dead_pid()}-abc"
    stale.mkdir()
    (stale / "pty.sock").write_bytes(b"")
    live = tmp_path / f"pyshim-pty-{os.getpid()}-def"
    live.mkdir()
    unrelated = tmp_path / "pty-other"
    unrelated.mkdir()

    console = ConsoleSocket()
    try:
        own = Path(console.path).parent
        assert own.parent == tmp_path and own.name.startswith(f"pyshim-pty-{os.getpid()}-")
        assert oct(own.stat().st_mode & 0o777) == oct(0o700)
        assert not stale.exists()
        assert live.exists() and unrelated.exists()
    finally:
        console.close()
    assert not own.exists()
