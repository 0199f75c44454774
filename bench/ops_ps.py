"""How long `pyshim ps` takes on a host with N pyshim containers (default 10, over two
namespaces, with one exec each in the first namespace): is it fast enough for `watch -n1`?

Starts a private containerd whose shims register in a run directory of its own
(PYSHIM_RUN_DIR), runs the containers, times `bin/pyshim ps` (the whole command: interpreter,
imports, registry, one Introspect call per shim) and `ps --json`, prints the medians and one
`pyshim ps` output, and stops everything by PID.

Usage: python -m bench.ops_ps [--containers N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.conftest import PYSHIM_RUNTIME, start_shim_containerd
from tests.e2e.containerd import make_busybox_rootfs

REPO = Path(__file__).resolve().parents[1]
PYSHIM = str(REPO / "bin" / "pyshim")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops_ps")
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="pyshim-bps-", dir="/tmp"))
    run_dir = base / "run"
    containerd = start_shim_containerd(base, env={"PYSHIM_RUN_DIR": str(run_dir)})
    env = {**os.environ, "PYSHIM_RUN_DIR": str(run_dir)}
    try:
        rootfs = make_busybox_rootfs(base / "rootfs")
        for index in range(args.containers):
            namespace = "default" if index % 2 == 0 else "team-b"
            name = f"app{index}"
            argv = ["/bin/sleep", "1000"] if index % 5 != 4 else ["/bin/sh", "-c", "exit 3"]
            containerd.ctr("run", "-d", "--runtime", PYSHIM_RUNTIME, "--rootfs", str(rootfs),
                           name, *argv, namespace=namespace)
            if namespace == "default" and index % 5 != 4:
                containerd.ctr("task", "exec", "--detach", "--exec-id", f"sh{index}", name,
                               "/bin/sleep", "1000")
        for command in (["ps"], ["ps", "--json"]):
            times = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                subprocess.run([PYSHIM, *command], env=env, check=True, capture_output=True)
                times.append(time.perf_counter() - started)
            print(f"pyshim {' '.join(command)} with {args.containers} containers: median "
                  f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
                  f"({args.rounds} rounds)")
        print(subprocess.run([PYSHIM, "ps"], env=env, check=True, capture_output=True,
                             text=True).stdout)
    finally:
        containerd.stop()


if __name__ == "__main__":
    main()
