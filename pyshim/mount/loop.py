"""Loop devices for `loop` mounts: attach a backing file to a free device with autoclear.
Never mounts and never detaches a device it did not attach.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct

# <linux/loop.h>
_LOOP_SET_FD = 0x4C00
_LOOP_CLR_FD = 0x4C01
_LOOP_SET_STATUS64 = 0x4C04
_LOOP_CTL_GET_FREE = 0x4C82
_LO_FLAGS_READ_ONLY = 1
_LO_FLAGS_AUTOCLEAR = 4
# struct loop_info64: device, inode, rdevice, offset, sizelimit; number, encrypt_type,
# encrypt_key_size, flags; file_name[64], crypt_name[64], encrypt_key[32]; init[2].
_LOOP_INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# Another process may take the free device between GET_FREE and SET_FD.
_LOOP_ATTEMPTS = 16


def attach_loop(backing: str, read_only: bool) -> tuple[int, str]:
    """Attach `backing` to a free loop device with autoclear; returns (open loop fd, path).

    Autoclear detaches the device when its last user goes: the mount, or this fd if the mount
    fails. The caller closes the fd once the mount call has returned.
    """
    mode = os.O_RDONLY if read_only else os.O_RDWR
    backing_fd = os.open(backing, mode | os.O_CLOEXEC)
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(_LOOP_ATTEMPTS):
                index = fcntl.ioctl(control, _LOOP_CTL_GET_FREE)
                path = f"/dev/loop{index}"
                loop_fd = os.open(path, mode | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(loop_fd, _LOOP_SET_FD, backing_fd)
                except OSError as exc:
                    os.close(loop_fd)
                    if exc.errno == errno.EBUSY:
                        continue
                    raise
                flags = _LO_FLAGS_AUTOCLEAR | (_LO_FLAGS_READ_ONLY if read_only else 0)
                name = os.fsencode(backing)[:63]
                info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
                try:
                    fcntl.ioctl(loop_fd, _LOOP_SET_STATUS64, info)
                except OSError:
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(loop_fd, _LOOP_CLR_FD, 0)
                    os.close(loop_fd)
                    raise
                return loop_fd, path
            raise OSError(errno.EBUSY, "no free loop device", "/dev/loop-control")
        finally:
            os.close(control)
    finally:
        os.close(backing_fd)
