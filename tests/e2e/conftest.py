"""Fixtures and collection rules for the end-to-end tests (real containerd, runc, root).

* Every test below this directory gets the ``e2e`` marker (select with ``-m e2e``, or leave
  them out with ``-m "not e2e"``).
* The tests are skipped when they cannot run here (not root, or ``containerd``/``ctr``
  missing), but when the ``CI`` environment variable is set (to anything but ``""``, ``0``,
  ``false`` or ``no``) that is a failure instead: CI must never skip them silently.
* ``containerd``: a started :class:`PrivateContainerd` in a fresh ``/tmp/pyshim-e2e-*``
  directory, stopped (processes killed, mounts and files removed) after the test whatever
  happened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.containerd import PrivateContainerd

E2E_DIR = Path(__file__).resolve().parent

#: Executables the harness needs.
REQUIRED_TOOLS = ("containerd", "ctr")


def in_ci() -> bool:
    """Whether we run under CI (``CI`` set to a true-ish value), where skipping is an error."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def e2e_unavailable_reason(
    tools: tuple[str, ...] = REQUIRED_TOOLS, files: tuple[str, ...] = ()
) -> str | None:
    """Why the e2e tests cannot run on this machine, or None if they can.

    ``tools`` must be on PATH and ``files`` must exist, besides running as root.
    """
    if os.geteuid() != 0:
        return "e2e tests need root (they run containerd and runc)"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"e2e tests need {', '.join(missing)} on PATH (run scripts/setup)"
    absent = [path for path in files if not os.path.exists(path)]
    if absent:
        return f"e2e tests need {', '.join(absent)} (run scripts/setup)"
    return None


def require_e2e(tools: tuple[str, ...] = REQUIRED_TOOLS, files: tuple[str, ...] = ()) -> None:
    """Skip the calling test if it cannot run here, or fail it when under CI.

    Tests that need more than the harness call it with their extra needs, e.g.
    ``require_e2e(("containerd", "ctr", "runc"), ("/bin/busybox",))``.
    """
    reason = e2e_unavailable_reason(tools, files)
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory (or below) as ``e2e``."""
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _e2e_requirements() -> None:
    """Runs first for every e2e test: skip (or fail under CI) when it cannot run here."""
    require_e2e()


@pytest.fixture
def containerd() -> Iterator[PrivateContainerd]:
    """A started private containerd in a fresh temp dir; always stopped and removed after."""
    base_dir = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    daemon = PrivateContainerd(base_dir)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
