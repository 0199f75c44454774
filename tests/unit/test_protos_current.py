"""The committed *_pb2.py / *_pb2.pyi modules must be exactly what `make protos` produces."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Directories holding the .proto files we author (the Makefile's PROTOS lists the same).
SOURCE_ROOTS = ("pyshim", "tests/e2e/cri")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
HINT = "run `make protos` and commit the result"


def _proto_files() -> list[str]:
    """Every .proto under SOURCE_ROOTS, relative to the repository root (as the Makefile lists
    them)."""
    return sorted(
        p.relative_to(REPO).as_posix()
        for root in SOURCE_ROOTS
        for p in (REPO / root).rglob("*.proto")
    )


def _generated_files(root: Path) -> set[str]:
    """Relative paths of every generated module below root/<each of SOURCE_ROOTS>."""
    return {
        p.relative_to(root).as_posix()
        for source_root in SOURCE_ROOTS
        for p in (root / source_root).rglob("*_pb2.py*")
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def _protoc_version() -> str:
    try:
        return metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        return "not installed"


def _regenerate(out: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        str(REPO),
        f"--python_out={out}",
        f"--pyi_out={out}",
        *_proto_files(),
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"protoc failed (grpcio-tools {_protoc_version()}): {result.stderr.strip()}; {HINT}"
    )


def test_there_are_protos() -> None:
    files = _proto_files()
    for source_root in SOURCE_ROOTS:
        assert any(f.startswith(source_root + "/") for f in files), (
            f"no .proto files found under {source_root}"
        )


def test_generated_modules_are_current(tmp_path: Path) -> None:
    _regenerate(tmp_path)
    fresh = _generated_files(tmp_path)
    committed = _generated_files(REPO)
    assert fresh, "protoc produced no *_pb2 modules"

    missing = sorted(fresh - committed)
    assert not missing, f"generated modules missing from the tree: {missing}; {HINT}"

    stale = sorted(
        rel for rel in fresh if (tmp_path / rel).read_bytes() != (REPO / rel).read_bytes()
    )
    assert not stale, (
        f"generated modules differ from their .proto (protoc from grpcio-tools "
        f"{_protoc_version()}): {stale}; {HINT}"
    )


def test_no_orphaned_generated_modules() -> None:
    orphans = []
    for rel in sorted(_generated_files(REPO)):
        stem = rel.removesuffix(".pyi").removesuffix(".py").removesuffix("_pb2")
        if not (REPO / f"{stem}.proto").is_file():
            orphans.append(rel)
    assert not orphans, f"*_pb2 modules without a .proto: {orphans}; delete them and {HINT}"
