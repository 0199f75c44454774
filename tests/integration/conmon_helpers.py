"""Shared by the conmon sink tests: running a scenario on uvloop with a bound, waiting for a
condition with a generous limit (never a timing assertion), reading CRI records."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import uvloop

T = TypeVar("T")

RECORD = re.compile(
    rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d) (stdout|stderr) ([PF]) (.*)"
)


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 60) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), timeout)

    return uvloop.run(bounded())


async def eventually(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def records(path: Path) -> list[tuple[bytes, str, str, bytes]]:
    """(timestamp, stream, tag, content) of every record; each line must be a record."""
    result = []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    for line in data.split(b"\n")[:-1]:
        match = RECORD.fullmatch(line)
        assert match is not None, line
        result.append((match[1], match[2].decode(), match[3].decode(), match[4]))
    return result


def connect(path: str | Path) -> socket.socket:
    """An attach client, connected the way podman does it (O_PATH handle, /proc/self/fd)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        client.connect(f"/proc/self/fd/{handle}")
    finally:
        os.close(handle)
    client.setblocking(False)
    return client


async def receive_until_eof(client: socket.socket, limit: int = 1 << 26) -> list[bytes]:
    """Every packet the client gets until the server closes (or shuts down) its side."""
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []
    total = 0
    while total < limit:
        packet = await loop.sock_recv(client, 8193)
        if not packet:
            break
        packets.append(packet)
        total += len(packet)
    return packets
