"""Readiness of non-blocking fds on the event loop: wait for readable/writable, poll writable
now, bytes pending in a pipe. Never reads, writes or closes the fds it looks at.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import select
import termios


def pending_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD); 0 when it cannot be told."""
    size = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, size, True)
    except OSError:
        return 0
    return size[0]


def writable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


async def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
    except PermissionError:
        return  # regular files and /dev/null cannot be polled: they are always ready
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
