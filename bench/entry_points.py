"""How fast each way of installing the shim's command starts: `-v` (interpreter start and the
lean imports only) and a task's `start` command (exec → address printed → exit, fork-server
on, as bench.shim_start measures it), median of N interleaved rounds, for

* `checkout`: the checkout's `bin/containerd-shim-pyshim-v1` (the launcher, runs .venv);
* `pip install`: the same launcher as pip installed it (script-files) into a fresh virtualenv
  from a wheel built from a copy of this source;
* `console_scripts`: what a `[project.scripts]` entry point would be in that virtualenv (pip's
  template: site, then `from pyshim.main import shim_main`) — the way avoided;
* `console_scripts, .venv`: the same entry point in the checkout's .venv (editable install and
  the test extras: site runs the editable finder and every .pth);
* `previous wrapper`: bin/containerd-shim-pyshim-v1 before the shared launcher (from git, at
  :data:`PREVIOUS_WRAPPER_COMMIT`), run from a directory shaped like the checkout.

Each variant has its own containerd address (so its own fork-server, stopped by PID at the end).

Usage: python -m bench.entry_points [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import prctl

from bench.shim_start import one_round, stop_forkserver
from pyshim.shim import forkclient

REPO = Path(__file__).resolve().parents[1]
#: The last commit with the per-name wrapper (before bin/pyshim became the shared launcher).
PREVIOUS_WRAPPER_COMMIT = "15b15916130acc385cb050fb54a63f15d4fac881"

CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from pyshim.main import shim_main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(shim_main())
"""


def install_fresh_venv(base: Path) -> Path:
    """A wheel of a copy of this source, pip-installed into base/venv; its bin directory."""
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyshim", "bin"):
        shutil.copytree(REPO / name, source / name, ignore=ignore, symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    wheels, venv = base / "wheels", base / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, cwd=base)
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, cwd=base)
    console = venv / "bin" / "shim-console-script"
    console.write_text(CONSOLE_SCRIPT.format(python=venv / "bin" / "python"))
    console.chmod(0o755)
    return venv / "bin"


def previous_wrapper(base: Path) -> Path | None:
    """The wrapper as it was before the shared launcher, in base/old/bin (None without git)."""
    try:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show",
             f"{PREVIOUS_WRAPPER_COMMIT}:bin/containerd-shim-pyshim-v1"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    root = base / "old"
    (root / "bin").mkdir(parents=True)
    (root / "pyshim").symlink_to(REPO / "pyshim")
    (root / ".venv").symlink_to(REPO / ".venv")
    wrapper = root / "bin" / "containerd-shim-pyshim-v1"
    wrapper.write_text(text)
    wrapper.chmod(0o755)
    return wrapper


def version_ms(shim: str) -> float:
    started = time.perf_counter()
    subprocess.run([shim, "-v"], stdout=subprocess.DEVNULL, check=True, cwd="/")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    os.environ[forkclient.ENABLE_VARIABLE] = "1"
    prctl.set_child_subreaper(1)
    base = Path(tempfile.mkdtemp(prefix="pyshim-bench-ep-", dir="/tmp"))
    variants: dict[str, str] = {}
    try:
        bin_dir = install_fresh_venv(base)
        variants["checkout"] = str(REPO / "bin" / "containerd-shim-pyshim-v1")
        variants["pip install"] = str(bin_dir / "containerd-shim-pyshim-v1")
        variants["console_scripts"] = str(bin_dir / "shim-console-script")
        dev_console = base / "shim-console-script-dev"
        dev_console.write_text(CONSOLE_SCRIPT.format(python=REPO / ".venv" / "bin" / "python"))
        dev_console.chmod(0o755)
        variants["console_scripts, .venv"] = str(dev_console)
        old = previous_wrapper(base)
        if old is not None:
            variants["previous wrapper"] = str(old)
        dirs = {name: base / f"v{index}" for index, name in enumerate(variants)}
        for directory in dirs.values():
            directory.mkdir()
        version: dict[str, list[float]] = {name: [] for name in variants}
        start: dict[str, list[float]] = {name: [] for name in variants}
        for index in range(args.rounds + 1):        # round 0 launches the fork-servers
            for name, shim in variants.items():
                v = version_ms(shim)
                s = one_round(dirs[name], index, shim)[0]
                if index:
                    version[name].append(v)
                    start[name].append(s)
    finally:
        for directory in base.glob("v*"):
            stop_forkserver(str(directory / "containerd.sock"))
        shutil.rmtree(base, ignore_errors=True)
    print(f"containerd-shim-pyshim-v1, medians of {args.rounds} interleaved rounds (ms)\n")
    print("| installed as | `-v` | `start` (fork-server on) |\n|---|---|---|")
    for name in variants:
        print(f"| {name} | {statistics.median(version[name]):.1f} "
              f"| {statistics.median(start[name]):.1f} |")


if __name__ == "__main__":
    main()
