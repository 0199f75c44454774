"""Unmounting everything stacked on a directory (the rootfs), retrying busy mounts.

Lean on purpose: the `delete` command imports it (no asyncio, protobuf or dataclasses at
import time). Never unmounts anything but the given target.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Generator

_BUSY_RETRIES = 50
_BUSY_WAIT = 0.05

# The process's own symbols include libc; ctypes.util.find_library would run ldconfig.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


class UnmountError(Exception):
    """Something stacked on a target could not be unmounted (still busy after the retries)."""

    def __init__(self, target: str, err: int) -> None:
        super().__init__(f"failed to unmount {target}: {go_strerror(err)}")
        self.target = target
        self.errno = err


def go_strerror(err: int) -> str:
    # Go spells errno strings in lower case; containerd's messages carry them that way.
    text = os.strerror(err)
    return text[:1].lower() + text[1:]


def unmount_steps(target: str, *, once: bool = False) -> Generator[float, None, None]:
    """Unmount what is stacked on `target` (or only the top mount, if `once`).

    Yields the delay to wait before retrying a busy mount, so the sync and async callers
    share one implementation.
    """
    if not target:
        return
    path = os.fsencode(target)
    busy = 0
    while True:
        if _libc.umount2(path, 0) == 0:
            if once:
                return
            busy = 0
            continue
        err = ctypes.get_errno()
        # EINVAL: not a mount point (any more); ENOENT: no such target.
        if err in (errno.EINVAL, errno.ENOENT):
            return
        if err == errno.EBUSY and busy < _BUSY_RETRIES:
            busy += 1
            yield _BUSY_WAIT
            continue
        raise UnmountError(target, err)


def unmount_all(target: str) -> None:
    """Unmount everything stacked on `target`; a missing or unmounted target is a no-op.

    A busy mount is retried up to 50 times, 50 ms apart, before UnmountError.
    """
    for delay in unmount_steps(target):
        time.sleep(delay)


async def unmount_all_async(target: str) -> None:
    """unmount_all for the event loop: busy retries wait without blocking the loop."""
    import asyncio

    for delay in unmount_steps(target):
        await asyncio.sleep(delay)

