"""What each step of a pyshim daemon's life costs in private memory: one daemon, driven over
ttrpc straight to its socket as containerd would, measured (``/proc/PID/smaps_rollup``) after
each step: forked and listening, ``Connect``, ``Create``, ``Start``, one exec cycle
(``Exec``/``Start``/``Wait``/``Delete`` of ``/bin/true``), then ``Kill`` + ``Delete`` of the
init. The daemons are forked by the warm fork-server (a first daemon, shut down at once,
brings it up).

What a step adds to Private_Dirty is what moving that step into a short-lived child would
save at most (the child's pages die with it). With ``--pages STAGE`` it prints
``bench.pages``' attribution (with objects) after that stage; with ``--delta`` as well, of
only the pages that became private in that step (what that step cost).

Needs root, containerd, runc, /bin/busybox. A private containerd serves the events; this
process is child subreaper while it runs, so the fork-server and the daemons re-parent to
it and are stopped by pid at the end.

Usage: python -m bench.daemon_stages [--runs N] [--pages STAGE [--delta]] [--overlay]

With ``--overlay`` Create mounts the rootfs (an overlay of the busybox tree, as containerd's
overlayfs snapshotter passes it) instead of the spec naming a directory: the mount code runs
in the daemon, as it does for every container of an image.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import uvloop
from google.protobuf import any_pb2, empty_pb2

from bench import pages
from bench.common import missing_requirements
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.protos.containerd.types import mount_pb2
from pyshim.shim.daemon import MEMORY_DUMP_VARIABLE
from pyshim.ttrpc import Client
from tests.e2e.conftest import (
    FORKSERVER_MARKER,
    SHIM_BIN_DIR,
    TASK,
    oci_spec,
    start_shim_containerd,
    unique_id,
    write_spec,
)
from tests.e2e.containerd import PrivateContainerd, make_busybox_rootfs

STAGES = ("listening", "connect", "create", "start", "exec", "delete")
PR_SET_CHILD_SUBREAPER = 36
SHIM = SHIM_BIN_DIR / "containerd-shim-pyshim-v1"
CALL_TIMEOUT = 60.0
_EXEC_SPEC = any_pb2.Any(
    type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
    value=json.dumps({"args": ["/bin/true"], "env": ["PATH=/bin:/sbin"], "cwd": "/",
                      "user": {"uid": 0, "gid": 0}}).encode())


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def shim_start(containerd: PrivateContainerd, rootfs: Path, container_id: str,
               overlay: bool = False) -> tuple[str, Path]:
    """``containerd-shim-pyshim-v1 start`` in a fresh bundle; (its address, the bundle).
    With `overlay` the spec's root is the bundle's `rootfs`, for Create to mount there."""
    bundle = containerd.base_dir / "bundles" / container_id
    bundle.mkdir(parents=True)
    spec = oci_spec(containerd, rootfs, ["/bin/sleep", "1000"], container_id=container_id)
    if overlay:
        spec["root"] = {"path": "rootfs"}
    write_spec(bundle / "config.json", spec)
    environment = {**os.environ, "TTRPC_ADDRESS": str(containerd.ttrpc_address),
                   MEMORY_DUMP_VARIABLE: "1",
                   "PATH": f"{SHIM_BIN_DIR}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    result = subprocess.run(
        [str(SHIM), "-namespace", "default", "-id", container_id, "-address",
         str(containerd.address), "start"],
        cwd=bundle, env=environment, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip(), bundle


def shim_processes_of_ours() -> list[psutil.Process]:
    """The fork-server and the daemons below us (we are their subreaper)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if FORKSERVER_MARKER in command or " -id " in command:
                found.append(process)
    return found


def daemon_pid(container_id: str) -> int:
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if f"-id {container_id} " in " ".join(process.cmdline()) + " ":
                return process.pid
    raise RuntimeError(f"no daemon for {container_id}")


def overlay_mounts(rootfs: Path, bundle: Path) -> list[mount_pb2.Mount]:
    """An overlay of the busybox rootfs, as containerd's overlayfs snapshotter passes it."""
    upper, work = bundle / "upper", bundle / "work"
    upper.mkdir()
    work.mkdir()
    return [mount_pb2.Mount(type="overlay", source="overlay", options=[
        f"lowerdir={rootfs}", f"upperdir={upper}", f"workdir={work}"])]


def measure_run(containerd: PrivateContainerd, rootfs: Path, pages_at: str | None,
                delta: bool = False, overlay: bool = False) -> dict[str, pages.Rollup]:
    container_id = unique_id("stages")
    address, _bundle = shim_start(containerd, rootfs, container_id, overlay)
    mounts = overlay_mounts(rootfs, _bundle) if overlay else []
    pid = daemon_pid(container_id)
    figures: dict[str, pages.Rollup] = {}
    attribution: list[str] = []

    forkserver = pages.forkserver_of(pid)
    previous: list[set[int]] = []

    def record(stage: str) -> None:
        figures[stage] = pages.rollup(pid)
        if stage == pages_at:
            attribution.append(pages.analyse(pid, forkserver, objects=True,
                                             since=previous[-1] if delta and previous else None))
        if delta:
            previous.append(pages.private_pages(pid, forkserver))

    # The daemon's own start-up (loop, server, publisher) is part of "listening"; nothing
    # tells when it is done before the first call, so give it half a second.
    time.sleep(0.5)

    async def scenario() -> None:
        record("listening")
        async with await Client.connect(address, timeout=10) as client:
            async def call(method: str, request: object, reply: type) -> object:
                return await client.call(TASK, method, request, reply,  # type: ignore[arg-type]
                                         timeout=CALL_TIMEOUT)

            await call("Connect", shim_pb2.ConnectRequest(id=container_id),
                       shim_pb2.ConnectResponse)
            record("connect")
            await call("Create", shim_pb2.CreateTaskRequest(
                id=container_id, bundle=str(_bundle), rootfs=mounts),
                shim_pb2.CreateTaskResponse)
            record("create")
            await call("Start", shim_pb2.StartRequest(id=container_id), shim_pb2.StartResponse)
            record("start")
            await call("Exec", shim_pb2.ExecProcessRequest(id=container_id, exec_id="e1",
                                                           spec=_EXEC_SPEC), empty_pb2.Empty)
            await call("Start", shim_pb2.StartRequest(id=container_id, exec_id="e1"),
                       shim_pb2.StartResponse)
            await call("Wait", shim_pb2.WaitRequest(id=container_id, exec_id="e1"),
                       shim_pb2.WaitResponse)
            await call("Delete", shim_pb2.DeleteRequest(id=container_id, exec_id="e1"),
                       shim_pb2.DeleteResponse)
            record("exec")
            await call("Kill", shim_pb2.KillRequest(id=container_id, signal=9),
                       empty_pb2.Empty)
            await call("Wait", shim_pb2.WaitRequest(id=container_id), shim_pb2.WaitResponse)
            await call("Delete", shim_pb2.DeleteRequest(id=container_id),
                       shim_pb2.DeleteResponse)
            record("delete")
            with contextlib.suppress(Exception):
                await call("Shutdown", shim_pb2.ShutdownRequest(id=container_id),
                           empty_pb2.Empty)

    uvloop.run(scenario())
    for line in attribution:
        print(f"--- bench.pages after {pages_at} ---\n{line}\n", flush=True)
    return figures


async def shutdown(address: str, container_id: str) -> None:
    async with await Client.connect(address, timeout=10) as client:
        with contextlib.suppress(Exception):
            await client.call(TASK, "Shutdown", shim_pb2.ShutdownRequest(id=container_id),
                              empty_pb2.Empty, timeout=CALL_TIMEOUT)


@contextlib.contextmanager
def environment() -> Iterator[tuple[PrivateContainerd, Path]]:
    become_subreaper()
    containerd = start_shim_containerd()
    try:
        yield containerd, make_busybox_rootfs(containerd.base_dir / "rootfs")
    finally:
        # The fork-server, any daemon left, and (after a failure) a container's processes
        # re-parented to us: everything below us but containerd's tree (its stop() ends
        # that) is ours; stop them by pid.
        keep = {containerd.subreaper_pid}
        with contextlib.suppress(psutil.Error):
            keep |= {child.pid for child in
                     psutil.Process(containerd.subreaper_pid).children(recursive=True)}
        for process in shim_processes_of_ours() + psutil.Process().children(recursive=True):
            if process.pid in keep:
                continue
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        containerd.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="daemons measured, one by one")
    parser.add_argument("--pages", choices=STAGES, help="bench.pages attribution at this stage")
    parser.add_argument("--delta", action="store_true",
                        help="with --pages: attribute only the pages that became private in "
                             "that step")
    parser.add_argument("--overlay", action="store_true",
                        help="Create mounts the rootfs (an overlay, as containerd's snapshotter "
                             "asks) instead of the spec naming the rootfs directory")
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason is not None:
        sys.exit(f"bench.daemon_stages: {reason}")
    runs: list[dict[str, pages.Rollup]] = []
    with environment() as (containerd, rootfs):
        warm_up = unique_id("warm-up")
        address, _ = shim_start(containerd, rootfs, warm_up)  # launches the fork-server
        uvloop.run(shutdown(address, warm_up))
        for index in range(args.runs):
            runs.append(measure_run(containerd, rootfs, args.pages if index == 0 else None,
                                    args.delta and index == 0, args.overlay))
    print(f"{'stage':<10} {'Private_Dirty':>13} {'delta':>6} {'USS':>6} {'PSS':>6} {'RSS':>6}"
          "  (KiB, median of runs)")
    previous = 0
    for stage in STAGES:
        values = sorted((run[stage] for run in runs if stage in run),
                        key=lambda rollup: rollup.private_dirty)
        if not values:
            continue
        middle = values[len(values) // 2]
        print(f"{stage:<10} {middle.private_dirty:>13} {middle.private_dirty - previous:>+6} "
              f"{middle.uss:>6} {middle.pss:>6} {middle.rss:>6}")
        previous = middle.private_dirty


if __name__ == "__main__":
    main()
