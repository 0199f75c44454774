"""`pyshim run`'s demo: a busybox rootfs made from the host's static busybox, and the script
the demo container runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess

BUSYBOX = "/bin/busybox"


class DemoError(Exception):
    """The demo rootfs cannot be made; the message says what to install."""


DEMO_SCRIPT = """\
echo "Hello from a busybox container under pyshim!"
echo
echo "  hostname: $(hostname)"
echo "  kernel:   $(uname -a)"
echo "  user:     $(id)"
echo "  pid:      $$ (the init of its own pid namespace)"
echo "  rootfs:   busybox with $(ls /bin | wc -l) applets in /bin"
echo
echo "Run your own: pyshim run --rootfs DIR -- CMD [ARG...]  (pyshim run --help)"
"""


def make_busybox_rootfs(directory: str, busybox: str = BUSYBOX) -> str:
    """A minimal rootfs in `directory`: a static busybox in /bin plus a symlink per applet."""
    if not os.path.exists(busybox):
        raise DemoError(f"the demo needs a static busybox at {busybox}: install it with "
                       "`apt-get install busybox-static`, or run scripts/demo")
    if not _is_static_elf(busybox):
        raise DemoError(f"{busybox} is not a statically linked program (the container has no "
                       "libc): install busybox-static (`apt-get install busybox-static`), or "
                       "run scripts/demo")
    bin_dir = os.path.join(directory, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    shutil.copy2(busybox, os.path.join(bin_dir, "busybox"))
    try:
        listed = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as error:
        raise DemoError(f"{busybox} --list failed: {error}") from error
    for applet in {"sh", "echo", "cat", "ls", "sleep", "uname", "id", "hostname", *listed}:
        if applet != "busybox" and "/" not in applet:
            with contextlib.suppress(FileExistsError):
                os.symlink("busybox", os.path.join(bin_dir, applet))
    return directory


def _is_static_elf(path: str) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP); False if unreadable."""
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            if len(header) < 52 or header[:4] != b"\x7fELF":
                return False
            order = "<" if header[5] == 1 else ">"
            if header[4] == 2:  # 64-bit
                (phoff,) = struct.unpack_from(order + "Q", header, 0x20)
                entry_size, count = struct.unpack_from(order + "HH", header, 0x36)
            else:
                (phoff,) = struct.unpack_from(order + "I", header, 0x1C)
                entry_size, count = struct.unpack_from(order + "HH", header, 0x2A)
            file.seek(phoff)
            table = file.read(entry_size * count)
    except (OSError, struct.error):
        return False
    pt_interp = 3
    return all(
        struct.unpack_from(order + "I", table, index * entry_size)[0] != pt_interp
        for index in range(count)
        if (index + 1) * entry_size <= len(table)
    )


