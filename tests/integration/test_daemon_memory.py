"""The daemon's memory habits in this process (no containerd): uvloop's zeroed receive buffer
is given back to the kernel, and the loop still reads correctly through it afterwards."""

from __future__ import annotations

import asyncio
import os
import socket

import uvloop

from pyshim.shim.daemon import PAGE_SIZE, release_zero_pages

#: 1 MiB through a stream: many times the 256 KiB buffer, so every part of it is used.
PAYLOAD = os.urandom(1 << 20)


def private_dirty_kib() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise AssertionError("no Private_Dirty in smaps_rollup")


def test_a_new_loops_zeroed_buffer_is_released_and_reads_stay_correct() -> None:
    loop = uvloop.new_event_loop()
    try:
        before = private_dirty_kib()
        released = release_zero_pages(loop)
        after = private_dirty_kib()
        # uvloop.Loop embeds a 256 KiB receive buffer: its 64 pages are zero, but for the one
        # or two it shares with the loop's other fields (the object is not page-aligned).
        assert released >= (256 * 1024) // PAGE_SIZE - 4, released
        assert before - after >= released * PAGE_SIZE // 1024 // 2, (before, after, released)
        assert release_zero_pages(loop) == released  # still zero (nothing read yet)

        async def read_through_the_loop() -> bytes:
            ours, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=ours)

            def send() -> None:
                theirs.sendall(PAYLOAD)
                theirs.shutdown(socket.SHUT_WR)

            try:
                sender = asyncio.get_running_loop().run_in_executor(None, send)
                received = await reader.read(-1)
                await sender
                return received
            finally:
                writer.close()
                theirs.close()

        assert loop.run_until_complete(read_through_the_loop()) == PAYLOAD
        # The buffer now holds data: pages with data are not released.
        assert release_zero_pages(loop) < released
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
