"""OOM kills in watched containers' cgroups, on the event loop (cgroup v1 eventfd, v2 inotify).

`OOMWatcher.add(key, cgroup, on_oom)` calls `on_oom(key)` once per OOM kill, also for a kill
before the watch existed; `check(key)` at the container's exit notifies a kill whose event is
late. No threads; a failed watch is logged, never allowed to fail a container.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
from collections.abc import Callable

from pyshim.cgroups import Cgroup, CgroupMode, check_result, parse_flat_keyed, read_file

__all__ = ["OOMWatcher"]

_log = logging.getLogger("pyshim.cgroups")

# The process's own symbols include libc (no ldconfig run by ctypes.util.find_library).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int
_IN_MODIFY = 0x2


def _v1_kills(directory: str) -> int:
    """memory.oom_control's oom_kill counter (0 when unreadable or on kernels before 4.13)."""
    return parse_flat_keyed(read_file(directory, "memory.oom_control") or "").get("oom_kill", 0)


class _Watch:
    """One registered fd and its cleanup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.closed = False
        # Looks for a counted kill not yet notified (OOMWatcher.check).
        self.check: Callable[[], None] = lambda: None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)
            os.close(self.fd)


class OOMWatcher:
    """Calls `on_oom(key)` when a watched container's cgroup has an OOM kill.

    Everything runs on `loop` (add_reader), no threads. A watch that cannot be set up is logged
    and skipped; a watch whose cgroup goes away removes itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, v2_counter: str = "oom_kill") -> None:
        self._loop = loop
        self._watches: dict[str, _Watch] = {}
        # The memory.events line whose increase is an OOM: `oom_kill` (containerd), `oom`
        # (conmon: the limit was hit, whether or not a process was killed for it).
        self._v2_counter = v2_counter

    def __contains__(self, key: object) -> bool:
        return key in self._watches

    def __len__(self) -> int:
        return len(self._watches)

    def add(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> None:
        """Watch `cgroup` under `key` (replacing an earlier watch of that key)."""
        self.remove(key)
        try:
            if cgroup.mode is CgroupMode.V1:
                watch = self._add_v1(key, cgroup, on_oom)
            else:
                watch = self._add_v2(key, cgroup, on_oom)
        except Exception as exc:
            _log.warning("cannot watch %s for OOM events: %s", key, exc)
            return
        self._watches[key] = watch

    def check(self, key: str) -> None:
        """At the watched container's exit: an OOM kill the cgroup counted but whose event has
        not arrived yet (the kernel may signal it after the victim is gone) is notified now,
        so that it comes before the exit is reported; its late event then says nothing."""
        watch = self._watches.get(key)
        if watch is not None:
            watch.check()

    def remove(self, key: str) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            watch.close()

    def close(self) -> None:
        for key in list(self._watches):
            self.remove(key)

    def _drop(self, key: str, watch: _Watch) -> None:
        # The key may meanwhile name a newer watch; only this one goes.
        if self._watches.get(key) is watch:
            del self._watches[key]
        watch.close()

    def _notify(self, key: str, on_oom: Callable[[str], None]) -> None:
        try:
            on_oom(key)
        except Exception:
            _log.exception("OOM callback for %s failed", key)

    def _add_v1(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> _Watch:
        directory = cgroup.paths.get("memory")
        if directory is None:
            raise LookupError("the cgroup has no memory controller")
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            control = os.open(
                os.path.join(directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC
            )
            try:
                events = os.open(
                    os.path.join(directory, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC
                )
                try:
                    os.write(events, f"{efd} {control}".encode())
                finally:
                    os.close(events)
            finally:
                # The kernel holds its own reference once registered.
                os.close(control)
            watch = _Watch(self._loop, efd)
            # notices given; of those, given by check() for a kill whose event is still to come;
            # kills counted before the watch existed.
            state = {"notices": 0, "ahead": 0, "before": _v1_kills(directory)}
            watch.check = lambda: self._v1_check(key, watch, directory, state, on_oom)
            self._loop.add_reader(efd, self._on_v1_event, key, watch, directory, state, on_oom)
        except BaseException:
            os.close(efd)
            raise
        # A kill before the watch existed (a container OOM-killed while `runc start` was still
        # returning) has no event of its own: memory.oom_control's counter tells.
        self._loop.call_soon(self._v1_earlier_kill, key, watch, directory, state, on_oom)
        return watch

    def _v1_earlier_kill(self, key: str, watch: _Watch, directory: str, state: dict[str, int],
                         on_oom: Callable[[str], None]) -> None:
        if not watch.closed and state["before"] > 0 and state["notices"] == 0:
            state["notices"] += 1
            self._notify(key, on_oom)

    def _v1_check(self, key: str, watch: _Watch, directory: str, state: dict[str, int],
                  on_oom: Callable[[str], None]) -> None:
        if watch.closed:
            return
        # What the kernel has signalled but the loop not yet delivered comes first (conmon's
        # final check reads the eventfd too); then a kill counted whose signal is still to come.
        self._on_v1_event(key, watch, directory, state, on_oom)
        if not watch.closed and _v1_kills(directory) > state["notices"]:
            state["notices"] += 1
            state["ahead"] += 1
            self._notify(key, on_oom)

    def _on_v1_event(
        self, key: str, watch: _Watch, directory: str, state: dict[str, int],
        on_oom: Callable[[str], None],
    ) -> None:
        try:
            count = int.from_bytes(os.read(watch.fd, 8), sys.byteorder)
        except BlockingIOError:
            return
        except OSError as exc:
            _log.warning("OOM watch of %s failed: %s", key, exc)
            self._drop(key, watch)
            return
        # The kernel also signals the eventfd when the cgroup is removed: one event then is the
        # removal, more (read at once) were an OOM before it (conmon reads them so too).
        if not os.path.isdir(directory):
            self._drop(key, watch)
            if count > 1 and not state["ahead"]:
                state["notices"] += 1
                self._notify(key, on_oom)
            return
        # Signalled as the OOM begins, before the kill is counted: each event is one notice,
        # but for a kill that check() already notified.
        if state["ahead"]:
            state["ahead"] -= 1
            return
        state["notices"] += 1
        self._notify(key, on_oom)

    def _add_v2(self, key: str, cgroup: Cgroup, on_oom: Callable[[str], None]) -> _Watch:
        directory = cgroup.path
        fd = check_result(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        try:
            events = os.path.join(directory, "memory.events")
            check_result(_libc.inotify_add_watch(fd, os.fsencode(events), _IN_MODIFY), events)
            # cgroup.events says when the last process has left ("populated 0").
            populated = os.path.join(directory, "cgroup.events")
            if _libc.inotify_add_watch(fd, os.fsencode(populated), _IN_MODIFY) < 0:
                _log.debug("cannot watch %s", populated)
            watch = _Watch(self._loop, fd)
            # containerd's baseline is 0 too: a kill before the watch counts (checked at once,
            # as the kill may have happened while `runc start` was still returning).
            state = {"count": 0}
            # The counter is compared with what was notified: checking early never repeats.
            watch.check = lambda: self._on_v2_event(key, watch, directory, state, on_oom)
            self._loop.add_reader(fd, self._on_v2_event, key, watch, directory, state, on_oom)
        except BaseException:
            os.close(fd)
            raise
        self._loop.call_soon(self._on_v2_event, key, watch, directory, state, on_oom)
        return watch

    def _on_v2_event(
        self,
        key: str,
        watch: _Watch,
        directory: str,
        state: dict[str, int],
        on_oom: Callable[[str], None],
    ) -> None:
        if watch.closed:
            return
        try:
            while os.read(watch.fd, 4096):
                pass  # the event records themselves do not matter; the files are re-read
        except BlockingIOError:
            pass
        except OSError as exc:
            _log.warning("OOM watch of %s failed: %s", key, exc)
            self._drop(key, watch)
            return
        text = read_file(directory, "memory.events")
        if text is None:
            self._drop(key, watch)
            return
        count = parse_flat_keyed(text).get(self._v2_counter, 0)
        if count > state["count"]:
            state["count"] = count
            self._notify(key, on_oom)
        populated = parse_flat_keyed(read_file(directory, "cgroup.events") or "").get("populated")
        if populated == 0:
            self._drop(key, watch)
