"""``bench.suite``'s ``ctr`` plumbing: unique container ids (recorded for the clean-up after a
crash), ``ctr`` calls whose failure stops the suite with a message naming the step, and the
start / removal of many containers."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import wait_for_no_shims
from bench.suite_env import BenchError, Config
from tests.e2e.containerd import CtrError, PrivateContainerd

#: The idle container of the memory and start figures.
SLEEP = ("/bin/sleep", "100000")


class Session:
    """The containerd, the rootfs and every container id handed out (read by the clean-up of
    :func:`bench.suite_env.suite_containerd`, so leftovers of a crash are removed)."""

    def __init__(self, containerd: PrivateContainerd, rootfs: Path, ids: list[str]) -> None:
        self.containerd = containerd
        self.rootfs = rootfs
        self.ids = ids
        #: pyshim's code stamp (forkclient.code_stamp) the fork-server is expected to run.
        self.code_stamp = ""
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def new_id(self, config: Config, tag: str) -> str:
        with self._lock:
            container_id = f"bs{os.getpid()}-{config.name}-{tag}-{next(self._counter)}"
            self.ids.append(container_id)
        return container_id

    def ctr(self, step: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[
            str]:
        """``ctr ARGS``; a failure raises BenchError naming ``step``."""
        try:
            return self.containerd.ctr(*args, timeout=timeout)
        except CtrError as error:
            raise BenchError(f"{step}: {error}") from None

    def run_argv(self, config: Config, *, detach: bool = False, rm: bool = False) -> list[str]:
        return ["run", *(["-d"] if detach else []), *(["--rm"] if rm else []),
                "--runtime", config.runtime, "--rootfs", str(self.rootfs)]

    def start_sleeper(self, config: Config, container_id: str, step: str) -> float:
        """``ctr run -d … /bin/sleep 100000``; its wall time in ms."""
        argv = [*self.run_argv(config, detach=True), container_id, *SLEEP]
        return timed_ms(lambda: self.ctr(f"{step}: {config.name}: start {container_id}", *argv))

    def start_many(self, config: Config, ids: list[str], step: str, workers: int = 1) -> float:
        """Start these sleepers, ``workers`` at a time; wall seconds. The first failure stops
        the suite (after the other workers' current starts end)."""
        begin = time.perf_counter()
        if workers <= 1:
            for container_id in ids:
                self.start_sleeper(config, container_id, step)
        else:
            run_all(workers, [functools.partial(self.start_sleeper, config, container_id, step)
                              for container_id in ids])
        return time.perf_counter() - begin

    def remove(self, ids: Iterable[str], step: str, workers: int = 4) -> None:
        """Kill and delete these containers (tasks first), wait until their shims are gone,
        and check that none is left."""
        wanted = list(ids)

        def remove_one(container_id: str) -> None:
            self.containerd.ctr("task", "rm", "-f", container_id, check=False)
            self.containerd.ctr("container", "rm", container_id, check=False)

        run_all(workers, [functools.partial(remove_one, cid) for cid in wanted])
        left = set(self.ctr(f"{step}: list containers", "container", "ls", "-q").stdout.split())
        stuck = sorted(left & set(wanted))
        if stuck:
            raise BenchError(f"{step}: containers not deleted: {stuck}")
        try:
            wait_for_no_shims(self.containerd, timeout=60.0)
        except RuntimeError as error:
            raise BenchError(f"{step}: {error}") from None


def timed_ms(action: Callable[[], object]) -> float:
    begin = time.perf_counter()
    action()
    return (time.perf_counter() - begin) * 1000


def run_all(workers: int, actions: list[Callable[[], object]]) -> None:
    """Run the actions on ``workers`` threads; re-raise the first failure (in order)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(action) for action in actions]
    for future in futures:
        future.result()
