"""pyshim-conmon's version answer (spec §2.2): the shell fast path and the Python one agree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pyshim import __version__
from pyshim.conmon.cli import CALLER_LC_CTYPE, main, restore_caller_environment, version_text

WRAPPER = Path(__file__).resolve().parents[2] / "bin" / "pyshim-conmon"
#: podman's check of the first line (libpod/oci_conmon_linux.go), wants >= 2.0.1.
PODMAN_VERSION = re.compile(r"^(version:|conmon version)? (\d+).(\d+).(\d+)")


def run_wrapper(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(WRAPPER), *args], capture_output=True, text=True, timeout=30)


def test_version_text_is_what_podman_and_crio_parse() -> None:
    text = version_text()
    assert text == f"conmon version 2.1.6\ncommit: pyshim-{__version__}\n"
    match = PODMAN_VERSION.match(text)
    assert match is not None and tuple(map(int, match.groups()[1:])) >= (2, 0, 1)
    assert text.split()[2] == "2.1.6"  # CRI-O: the third whitespace-separated field


def test_wrapper_fast_path_equals_python_answer() -> None:
    result = run_wrapper("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, version_text(), "")


@pytest.mark.parametrize("args", [["--version", "--log-level=debug"], ["-c", "x", "--version"],
                                  ["--version=1"]])
def test_version_among_other_options_goes_through_python(args: list[str]) -> None:
    result = run_wrapper(*args)
    assert (result.returncode, result.stdout) == (0, version_text())


def test_bad_command_lines_are_refused_as_conmon_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", "x", "--", "--version"]) == 1
    assert capsys.readouterr() == ("", "[conmon:e] Container UUID not provided. Use --cuuid\n")
    assert main(["--bogus", "--version"]) == 1
    assert capsys.readouterr() == ("conmon: option parsing failed: Unknown option --bogus\n", "")


@pytest.mark.parametrize(("note", "before", "after"), [
    ("", {"LC_CTYPE": "C.UTF-8"}, {}),  # unset by the caller: coercion's value goes
    ("=C", {"LC_CTYPE": "C.UTF-8"}, {"LC_CTYPE": "C"}),
    ("=", {"LC_CTYPE": "C.UTF-8"}, {"LC_CTYPE": ""}),
    (None, {"LC_CTYPE": "C.UTF-8"}, {"LC_CTYPE": "C.UTF-8"}),  # not started by bin/pyshim
])
def test_caller_lc_ctype_is_restored(note: str | None, before: dict[str, str],
                                     after: dict[str, str]) -> None:
    environ = dict(before)
    if note is not None:
        environ[CALLER_LC_CTYPE] = note
    restore_caller_environment(environ)
    assert environ == after
