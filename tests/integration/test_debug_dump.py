"""The debug dump (pyshim.shim.stacks) on a real event loop: each task with the future it
waits for and its await chain, each thread; and the log writer, which waits on the loop for a
full pipe instead of blocking it, and gives up when nobody reads."""

from __future__ import annotations

import asyncio
import os
import threading

import uvloop

from pyshim.shim import stacks


async def _inner(event: asyncio.Event) -> None:
    await event.wait()


async def _outer(event: asyncio.Event) -> None:
    await _inner(event)


def test_dump_names_each_task_what_it_waits_for_and_its_chain() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name="blocked-worker", daemon=True)
    worker.start()

    async def scenario() -> str:
        event = asyncio.Event()
        task = asyncio.get_running_loop().create_task(_outer(event), name="handler X")
        await asyncio.sleep(0)
        text = stacks.dump("test")
        event.set()
        await task
        return text

    try:
        text = uvloop.run(scenario())
    finally:
        release.set()
        worker.join()
    lines = text.splitlines()
    assert lines[0].startswith(f"=== pyshim debug dump: test, pid {os.getpid()}")
    start = lines.index("--- task 'handler X' (pending): waits for "
                        "<Future pending cb=[Task.task_wakeup()]>")
    chain = [line.split()[0] for line in lines[start + 1 : start + 4]]
    assert chain == ["wait", "_inner", "_outer"]  # innermost first
    assert any(line.startswith("--- thread blocked-worker") for line in lines)
    assert lines[-1] == f"=== end of pyshim debug dump (pid {os.getpid()}) ==="


def test_writer_waits_for_a_full_pipe_without_blocking_the_loop() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    data = os.urandom(1 << 20)  # far more than the pipe holds

    async def scenario() -> tuple[bool, bytes]:
        loop = asyncio.get_running_loop()
        writer = loop.create_task(stacks.write_nonblocking(write_end, data, timeout=60))
        received = bytearray()
        while len(received) < len(data):
            # The loop keeps running while the writer waits: this reader runs on it.
            await asyncio.sleep(0)
            try:
                received += os.read(read_end, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        return await writer, bytes(received)

    os.set_blocking(read_end, False)
    try:
        done, received = uvloop.run(scenario())
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done and received == data


def test_writer_gives_up_when_nobody_reads() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        assert uvloop.run(stacks.write_nonblocking(write_end, b"x" * (1 << 20), 0.2)) is False
        os.close(read_end)
        read_end = -1
        assert uvloop.run(stacks.write_nonblocking(write_end, b"x")) is False  # EPIPE
    finally:
        if read_end >= 0:
            os.close(read_end)
        os.close(write_end)
