"""conmon's OOM marker (spec §11.3): the engine's OOM watch on the container's memory cgroup,
and on an OOM kill an empty `oom` file in `--persist-dir` and in the bundle (never the cwd).

cgroup v1 (eventfd on memory.oom_control) and v2 (inotify on memory.events, its `oom` line as
conmon 2.1 reads it, and once more at exit) both come from pyshim.cgroups. A watch that
cannot be set up is a warning, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
import os

from pyshim import cgroups
from pyshim.oom import OOMWatcher

log = logging.getLogger("pyshim.conmon")

OOM_FILE = "oom"


def write_oom_marker(directory: str) -> None:
    """An empty `<directory>/oom` (O_CREAT, 0666 minus umask); an existing one is kept."""
    fd = os.open(os.path.join(directory, OOM_FILE), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                 0o666)
    os.close(fd)


class OomMonitor:
    """Watches one container process's memory cgroup for OOM kills.

    `oom_killed` turns true at the first OOM kill, when the marker files are written.
    """

    def __init__(self, *, bundle: str | None, persist_dir: str | None,
                 watcher: OOMWatcher | None = None,
                 cgroup_root: str = cgroups.DEFAULT_ROOT) -> None:
        self.directories = [d for d in (persist_dir, bundle) if d]
        self.oom_killed = False
        self._watcher = watcher
        self._cgroup_root = cgroup_root
        self._key: str | None = None

    def watch(self, pid: int) -> bool:
        """Start watching pid's memory cgroup (after the PID message, spec §4.1 step 17);
        False (after a warning) if it cannot be watched."""
        try:
            cgroup = cgroups.cgroup_of_pid(pid, self._cgroup_root)
        except (cgroups.CgroupNotFound, OSError) as error:
            log.warning("[conmon:w]: Failed to get the memory cgroup of %d: %s", pid, error)
            return False
        return self.watch_cgroup(cgroup, key=str(pid))

    def watch_cgroup(self, cgroup: cgroups.Cgroup, *, key: str) -> bool:
        if self._watcher is None:
            # v2: conmon 2.1 reads the `oom` line of memory.events, not `oom_kill`.
            self._watcher = OOMWatcher(asyncio.get_running_loop(), v2_counter="oom")
        self._key = key
        self._watcher.add(key, cgroup, self._on_oom)
        return key in self._watcher

    def final_check(self) -> None:
        """At the container's exit (spec §11.1 step 1): an OOM kill the kernel reported but
        the loop has not handled yet is handled now, so it lands before the exit files."""
        if self._watcher is not None and self._key is not None:
            self._watcher.check(self._key)

    def close(self) -> None:
        if self._watcher is not None and self._key is not None:
            self._watcher.remove(self._key)
        self._key = None

    def _on_oom(self, _key: str) -> None:
        if self.oom_killed:
            return
        self.oom_killed = True
        log.info("[conmon:i]: OOM received")
        for directory in self.directories:
            try:
                write_oom_marker(directory)
            except OSError as error:
                log.warning("[conmon:w]: Failed to write oom file in %s: %s", directory,
                            error.strerror)
