"""environ_table: the same results as os.environ's own methods."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from pyshim import environ_table


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
    environ_table.replace(wanted)
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


@pytest.mark.usefixtures("saved_environment")
def test_copy_without() -> None:
    os.environ["NOTIFY_SOCKET"] = "/run/notify"
    os.environ["PYSHIM_TEST_ODD"] = "odd \udcff \u00e9"
    assert environ_table.copy_without("NOTIFY_SOCKET") == {
        key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    assert "PYSHIM_TEST_ODD" in environ_table.copy_without("NOTIFY_SOCKET")


@pytest.mark.usefixtures("saved_environment")
def test_get_is_os_environ_get() -> None:
    os.environ["PYSHIM_TEST_GET"] = "nouveau \u00e9"
    os.environ["PYSHIM_TEST_RAW"] = "bad\udcff"
    os.environ.pop("PYSHIM_TEST_ABSENT", None)
    for name in ("PYSHIM_TEST_GET", "PYSHIM_TEST_RAW", "PYSHIM_TEST_ABSENT"):
        assert environ_table.get(name) == os.environ.get(name)


@pytest.mark.usefixtures("saved_environment")
def test_replace_changes_only_what_differs() -> None:
    os.environ["PYSHIM_TEST_KEEP"] = "same"
    os.environ["PYSHIM_TEST_CHANGE"] = "old"
    os.environ["PYSHIM_TEST_GONE"] = "stale"
    table = os.environ._data  # type: ignore[attr-defined]
    kept = table[b"PYSHIM_TEST_KEEP"]
    wanted = {**os.environ, "PYSHIM_TEST_CHANGE": "new", "PYSHIM_TEST_ADDED": "added"}
    del wanted["PYSHIM_TEST_GONE"]
    environ_table.replace(wanted)
    assert dict(os.environ) == wanted
    assert table[b"PYSHIM_TEST_KEEP"] is kept  # untouched, not replaced by an equal copy
    shown = _child_environment()
    assert b"PYSHIM_TEST_CHANGE=new" in shown and b"PYSHIM_TEST_ADDED=added" in shown
    assert not any(line.startswith(b"PYSHIM_TEST_GONE=") for line in shown)
