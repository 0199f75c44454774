"""What the containerd benchmarks (``bench.lifecycle``, ``bench.stdout_relay``) share: the two
runtimes compared, a private containerd with a busybox rootfs, and small helpers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from tests.e2e.conftest import (
    BUSYBOX,
    SHIM_TOOLS,
    e2e_unavailable_reason,
    shim_processes,
    start_shim_containerd,
)
from tests.e2e.containerd import (
    CTR_FIFO_DIR,
    DEFAULT_RUNC_ROOT,
    PrivateContainerd,
    cgroup_hierarchies,
    make_busybox_rootfs,
)

PYSHIM = "io.containerd.pyshim.v1"
RUNC_V2 = "io.containerd.runc.v2"
SHORT = {PYSHIM: "pyshim", RUNC_V2: "runc-v2"}


def timed(action: Callable[[], object]) -> float:
    """Milliseconds ``action()`` took."""
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def wait_for_no_shims(containerd: PrivateContainerd, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while shim_processes(containerd):
        if time.monotonic() > deadline:
            raise RuntimeError("a shim did not exit after its container was deleted")
        time.sleep(0.02)


@contextlib.contextmanager
def private_containerd(
    container_ids: Collection[str] = (), namespace: str = "default", *,
    wrappers: Callable[[Path], object] | None = None,
) -> Iterator[tuple[PrivateContainerd, Path]]:
    """A started private containerd (``bin/`` first on its PATH) and a busybox rootfs below its
    base directory. ``wrappers(directory)``, if given, writes executables into
    ``<base>/wrappers``, which then comes first on the PATH.

    Everything is stopped and removed on exit, also on KeyboardInterrupt; a second Ctrl-C
    during that clean-up is ignored, so it cannot leave mounts or processes.

    ``container_ids`` (read on exit, so the caller may add to it meanwhile) names every
    container the caller tried to start in ``namespace``: after the containerd's stop, what a
    start that was cut short left outside the base directory is removed too (see
    :func:`remove_container_leftovers`).
    """
    parents = [DEFAULT_RUNC_ROOT / namespace,
               *(root / namespace for root in cgroup_hierarchies())]
    new_parents = [parent for parent in parents if not parent.exists()]
    base = Path(tempfile.mkdtemp(prefix="pyshim-b-", dir="/tmp"))
    path = None
    try:
        if wrappers is not None:
            wrappers(base / "wrappers")
            path = f"{base / 'wrappers'}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
        containerd = start_shim_containerd(base, path=path)  # stops itself if it fails
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)  # a failed start stopped what it started
        raise
    try:
        yield containerd, make_busybox_rootfs(base / "rootfs")
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            try:
                containerd.stop()
            finally:
                if container_ids:
                    remove_container_leftovers(container_ids, namespace)
                    for parent in new_parents:  # as stop() does, once our leftovers are gone
                        with contextlib.suppress(OSError):
                            os.rmdir(parent)
        finally:
            signal.signal(signal.SIGINT, previous)


def remove_container_leftovers(
    container_ids: Collection[str], namespace: str = "default", timeout: float = 5.0
) -> None:
    """Remove what these containers left outside a stopped private containerd's base directory.

    :meth:`PrivateContainerd.stop` SIGKILLs whatever runs, so a container whose start was cut
    short (Ctrl-C while ``runc create`` ran) can leave a runc state directory without
    ``state.json`` (so ``runc delete`` does not know it), its cgroups, and ``ctr``'s FIFO
    directory. Only these ids are touched: the caller's own, unique names. Call it only after
    every process of that containerd is dead (their cgroups are then empty and can go).
    """
    ids = set(container_ids)
    for container_id in ids:
        shutil.rmtree(DEFAULT_RUNC_ROOT / namespace / container_id, ignore_errors=True)
    fifo_names = {f"{container_id}-{stream}"
                  for container_id in ids for stream in ("stdin", "stdout", "stderr")}
    with contextlib.suppress(OSError):
        for entry in os.scandir(CTR_FIFO_DIR):
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and fifo_names & set(os.listdir(entry)):
                    shutil.rmtree(entry.path, ignore_errors=True)
    cgroups = [root / namespace / container_id
               for root in cgroup_hierarchies() for container_id in ids]
    deadline = time.monotonic() + timeout
    while True:
        cgroups = [cgroup for cgroup in cgroups if cgroup.is_dir()]
        for cgroup in cgroups:
            with contextlib.suppress(OSError):  # busy until its (killed) tasks are gone
                os.rmdir(cgroup)
        if not cgroups:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroups still busy after {timeout} s: {cgroups}")
        time.sleep(0.05)


def missing_requirements() -> str | None:
    return e2e_unavailable_reason(SHIM_TOOLS, (BUSYBOX,))
