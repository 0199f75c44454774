"""Fixtures for socket-level tests: a real ttrpc server process on a real unix socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    path: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_server_process(directory: Path, *, mode: str = "0600") -> ServerProcess:
    path = str(directory / "ttrpc.sock")
    log_path = directory / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.ttrpc_server", path, "--mode", mode],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        process.wait()
        raise RuntimeError(f"ttrpc test server did not start:\n{log_path.read_text()}")
    return ServerProcess(path, process, log_path)


def stop_server_process(server: ServerProcess) -> None:
    if server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
    if server.process.stdout is not None:
        server.process.stdout.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a path short enough for sun_path (108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="pyshim-t-", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def ttrpc_server(short_tmp: Path) -> Iterator[ServerProcess]:
    server = start_server_process(short_tmp)
    try:
        yield server
    finally:
        stop_server_process(server)
