"""`pyshim run`'s command-line checks that stop before any container exists: --id by
containerd's identifier rules, a runc whose `spec` fails, --log-path naming a directory.
Each names the problem in one line and exits 125; nothing is left in pyshim run's TMPDIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_run import (
    require_run,
    rootfs,  # noqa: F401  (fixture)
    run,
)


@pytest.mark.parametrize(
    ("container_id", "expected"),
    [
        (".", "invalid container id '.' must match"),
        ("..", "invalid container id '..' must match"),
        ("-x", "invalid container id '-x' must match"),
        ("a/b", "invalid container id 'a/b' must match"),
        ("x" * 77, "greater than maximum length (76 characters)"),
    ],
    ids=["dot", "dotdot", "flag", "slash", "too-long"],
)
def test_id_is_checked_with_containerds_rules(
    tmp_path: Path, rootfs: Path, container_id: str, expected: str  # noqa: F811
) -> None:
    finished = run([f"--id={container_id}", "--rootfs", str(rootfs), "--", "/bin/true"],
                   tmp_path)
    assert finished.status == 125
    assert finished.stderr.startswith("pyshim run: ") and expected in finished.stderr, \
        finished.stderr
    assert finished.stderr.count("\n") == 1 and "already in use" not in finished.stderr


def test_longest_valid_id_runs(tmp_path: Path, rootfs: Path) -> None:  # noqa: F811
    container_id = "a" * 60 + "-" + "b" * 15  # 76 characters
    finished = run(["--rootfs", str(rootfs), "--", "/bin/sh", "-c", "exit 6"], tmp_path,
                   container_id)
    assert finished.status == 6, finished.stderr


def test_runc_spec_failure_says_why(tmp_path: Path, rootfs: Path) -> None:  # noqa: F811
    finished = run(["--runc", "/bin/false", "--rootfs", str(rootfs), "--", "/bin/true"],
                   tmp_path)
    assert finished.status == 125
    assert finished.stderr == "pyshim run: /bin/false spec failed (exit status 1): no output\n"
    noisy = tmp_path / "noisy-runc"
    noisy.write_text("#!/bin/sh\necho 'spec: no space left' >&2\nexit 3\n")
    noisy.chmod(0o755)
    finished = run(["--runc", str(noisy), "--rootfs", str(rootfs), "--", "/bin/true"],
                   tmp_path)
    assert finished.status == 125
    assert finished.stderr == (f"pyshim run: {noisy} spec failed (exit status 3): "
                               "spec: no space left\n")


def test_log_path_naming_a_directory_is_refused_clearly(tmp_path: Path) -> None:
    require_run()
    directory = tmp_path / "logs"
    directory.mkdir()
    finished = run(["--log-path", str(directory), "--rootfs", str(tmp_path), "--",
                    "/bin/true"], tmp_path)
    assert finished.status == 125
    assert finished.stderr == (f"pyshim run: --log-path {directory} is a directory: name the "
                               f"log file (e.g. {directory}/container.log)\n")
    assert list(directory.iterdir()) == []


def test_terminal_does_not_go_with_log_path(tmp_path: Path, rootfs: Path) -> None:  # noqa: F811
    finished = run(["-t", "--log-path", str(tmp_path / "c.log"), "--rootfs", str(rootfs), "--",
                    "/bin/true"], tmp_path)
    assert finished.status == 125
    assert "--log-path does not go with a terminal" in finished.stderr
