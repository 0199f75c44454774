"""fuse and fuse3 mounts through the mount.fuse/mount.fuse3 helpers, judged by the mount
table. Never waits on a helper longer than its timeout, never reads its output from a pipe.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from pyshim.mount.options import Mount, MountError

_FUSE_HELPER_TIMEOUT = 60.0
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mounts_at(path: str) -> int:
    """How many mounts /proc/self/mountinfo lists at `path` (fuse helpers are checked by it)."""
    real = os.path.realpath(path)
    count = 0
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        for line in info:
            fields = line.split(" ", 5)
            if len(fields) > 4:
                point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
                count += point == real
    return count


def mount_fuse(mount: Mount, target: str) -> None:
    fuse3 = mount.type.startswith("fuse3.")
    helper = "mount.fuse3" if fuse3 else "mount.fuse"
    subtype = mount.type.split(".", 1)[1]
    args = [helper, mount.source, target]
    for option in mount.options:
        args += ["-o", option]
    args += ["-t", subtype]
    command = " ".join(args)
    before = _mounts_at(target)
    # Output goes to a file, not a pipe: a fuse daemon the helper leaves behind could hold a
    # pipe open forever.
    with tempfile.TemporaryFile() as output:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=_FUSE_HELPER_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MountError(
                mount.type, mount.source, target, f"mount helper [{command}] failed: {exc}"
            ) from exc
        if result.returncode != 0:
            output.seek(0)
            text = output.read(4096).decode(errors="replace").strip()
            raise MountError(
                mount.type,
                mount.source,
                target,
                f"mount helper [{command}] failed: {text!r}: exit status {result.returncode}",
            )
    # The daemon's SIGCHLD reaper can take the helper's exit status first (subprocess then
    # reports 0), so success is judged by the mount table, not the status alone.
    if _mounts_at(target) <= before:
        raise MountError(
            mount.type, mount.source, target, f"mount helper [{command}] mounted nothing"
        )
