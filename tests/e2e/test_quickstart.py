"""The README's containerd commands, run as written: ``deploy/containerd/quickstart.sh`` (which
the README quotes; ``tests/unit/test_readme.py`` keeps the two equal) against a private
containerd, once with this checkout's launchers and once with a wheel of pyshim installed by pip
into a fresh virtualenv (no checkout on sys.path: only the installed entry points are on PATH).

The script talks to the private containerd through ``CONTAINERD_ADDRESS`` and to a namespace
of its own (``CONTAINERD_NAMESPACE``: runc's state directory is per namespace and shared by
every containerd on the host); it runs in a scratch directory, where it writes its image
archive and rootfs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    BUSYBOX,
    SHIM_BIN_DIR,
    SHIM_TOOLS,
    assert_no_leftovers,
    forkserver_env,
    forkserver_processes,
    require_e2e,
    start_shim_containerd,
    unique_id,
)
from tests.e2e.containerd import PrivateContainerd

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "deploy" / "containerd" / "quickstart.sh"
CONTAINER_IDS = ("demo", "c1")
SCRIPT_TIMEOUT = 300.0
PIP_TIMEOUT = 600.0


def run_quickstart(containerd: PrivateContainerd, bin_dir: Path, scratch: Path) -> str:
    """Run the quickstart verbatim with ``bin_dir`` first on PATH; its output (stdout and
    stderr, with sh -x's trace). Leaves nothing in containerd (checked)."""
    namespace = unique_id("quickstart")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "CONTAINERD_ADDRESS": str(containerd.address),
        "CONTAINERD_NAMESPACE": namespace,
    }
    env.pop("PYTHONPATH", None)
    try:
        result = subprocess.run(
            ["sh", str(QUICKSTART)], cwd=scratch, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=SCRIPT_TIMEOUT, check=False,
        )
    finally:
        for container_id in CONTAINER_IDS:
            if containerd.ctr("container", "info", container_id, namespace=namespace,
                              check=False).returncode == 0:
                containerd.ctr("task", "rm", "-f", container_id, namespace=namespace,
                               check=False)
                containerd.ctr("container", "rm", container_id, namespace=namespace,
                               check=False)
    assert result.returncode == 0, f"quickstart failed:\n{result.stdout}"
    lines = result.stdout.splitlines()
    assert "hi" in lines, result.stdout              # `ctr run --rm … demo echo hi`
    assert any("/bin/sleep 1000" in line and not line.startswith("+") for line in lines), (
        f"`ctr task exec … /bin/ps` did not list the container's sleep:\n{result.stdout}"
    )
    assert_no_leftovers(containerd, CONTAINER_IDS, namespace=namespace)
    return result.stdout


@pytest.fixture
def scratch() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pyshim-e2e-qs-", dir="/tmp")).resolve()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_quickstart_runs_as_written_from_the_checkout(scratch: Path) -> None:
    require_e2e(SHIM_TOOLS, (BUSYBOX, str(SHIM_BIN_DIR / "pyshim")))
    containerd = start_shim_containerd(env=forkserver_env(True))
    try:
        run_quickstart(containerd, SHIM_BIN_DIR, scratch)
    finally:
        containerd.stop()


def _copy_source(destination: Path) -> None:
    """What a source distribution holds, so that the build writes nothing into the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyshim", "bin"):
        shutil.copytree(REPO / name, destination / name, ignore=ignore, symlinks=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)


def test_pip_installed_package_runs_containers_with_its_entry_points(scratch: Path) -> None:
    require_e2e(SHIM_TOOLS, (BUSYBOX,))
    source, wheels, venv = scratch / "source", scratch / "wheels", scratch / "venv"
    work = scratch / "work"
    work.mkdir()
    _copy_source(source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(source)], check=True, timeout=PIP_TIMEOUT, cwd=scratch)
    (wheel,) = wheels.glob("pyshim-*.whl")
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=PIP_TIMEOUT)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   timeout=PIP_TIMEOUT, cwd=scratch)

    bin_dir = venv / "bin"
    for command in ("pyshim", "containerd-shim-pyshim-v1", "pyshim-conmon"):
        launcher = bin_dir / command
        assert launcher.is_file() and not launcher.is_symlink(), launcher
        assert os.access(launcher, os.X_OK), launcher
    located = subprocess.run(
        [str(bin_dir / "python"), "-I", "-c", "import pyshim; print(pyshim.__file__)"],
        cwd=work, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert located.startswith(str(venv) + "/"), located

    containerd = start_shim_containerd(env=forkserver_env(True), bin_dir=bin_dir)
    try:
        run_quickstart(containerd, bin_dir, work)
        # The fork-server (it outlives the script) is the installed package's interpreter.
        servers = forkserver_processes(containerd)
        assert servers, "the quickstart's shims started no fork-server"
        for server in servers:
            command_line = server.cmdline()
            assert command_line[0].startswith(str(venv) + "/"), command_line
            assert not any(str(REPO) in word for word in command_line), command_line
    finally:
        containerd.stop()
