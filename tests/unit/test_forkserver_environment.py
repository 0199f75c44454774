"""forkserver.replace_environment: the same result as os.environ.clear() + update()."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from pyshim.shim.forkserver import replace_environment


@pytest.fixture
def saved_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.usefixtures("saved_environment")
def test_replaces_python_and_c_environment() -> None:
    os.environ["PYSHIM_TEST_STALE"] = "old"
    wanted = {"PATH": "/bin:/usr/bin", "PYSHIM_TEST_NEW": "nouveau \u00e9", "EMPTY": "",
              "RAW": "bad\udcff"}
    replace_environment(wanted)
    assert dict(os.environ) == wanted
    assert os.getenv("PYSHIM_TEST_STALE") is None
    assert os.environ["PYSHIM_TEST_NEW"] == "nouveau \u00e9"
    # The C environment, as a child started without env= sees it: as after clear() + update()
    # (both remove only the variables os.environ knows).
    replaced = _child_environment()
    os.environ.clear()
    os.environ.update(wanted)
    assert replaced == _child_environment()
    assert f"PYSHIM_TEST_NEW={wanted['PYSHIM_TEST_NEW']}".encode() in replaced


def _child_environment() -> list[bytes]:
    shown = subprocess.run(["/usr/bin/env"], capture_output=True, check=True).stdout
    return sorted(shown.splitlines())
