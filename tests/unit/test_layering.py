"""The engine knows no front end: its modules import only each other, the standard library and
third-party packages other than protobuf (docs: design.md, "Layers").

Imports are read with ast from the source (also those inside functions and TYPE_CHECKING
blocks), so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pyshim"

# The engine: processes, runtime, reaper, IO, logs, host plumbing, bundle records (and their
# fsyncs), errors.
ENGINE = (
    "pyshim.errors", "pyshim.process", "pyshim.runtime", "pyshim.reaper", "pyshim.io",
    "pyshim.logs", "pyshim.mount", "pyshim.umount", "pyshim.cgroups", "pyshim.oom",
    "pyshim.bundle", "pyshim.jsonlite", "pyshim.environ_table", "pyshim.durable",
)
# What it must never reach, named for the message (everything outside ENGINE is refused).
FRONT_ENDS = ("pyshim.ttrpc", "pyshim.protos", "pyshim.shim", "pyshim.task_service",
              "pyshim.events", "pyshim.conmon", "pyshim.options", "pyshim.run")
FOREIGN = ("google.protobuf",)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def engine_files() -> list[Path]:
    files = sorted(path for path in PACKAGE.rglob("*.py")
                   if _within(_module_name(path), ENGINE))
    assert files, "no engine modules found"
    return files


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    return imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    tree = ast.parse(source)
    package = module.split(".")
    if not is_package:
        package.pop()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pyshim import bundle`: the names may be modules themselves.
            found.update(f"{base}.{alias.name}" for alias in node.names if base == "pyshim")
    return found


@pytest.mark.parametrize("path", engine_files(), ids=lambda path: _module_name(path))
def test_engine_module_imports_no_front_end(path: Path) -> None:
    modules = imported_modules(path)
    ours = {module for module in modules if _within(module, ("pyshim",)) and module != "pyshim"}
    outside = sorted(module for module in ours if not _within(module, ENGINE))
    named = sorted(module for module in outside if _within(module, FRONT_ENDS))
    assert not named, f"{_module_name(path)} imports front-end modules {named}"
    assert not outside, f"{_module_name(path)} imports non-engine modules {outside}"
    foreign = sorted(module for module in modules if _within(module, FOREIGN))
    assert not foreign, f"{_module_name(path)} imports {foreign}"


def test_the_checker_sees_lazy_typing_only_and_relative_imports() -> None:
    assert "pyshim.errors" in imported_modules(PACKAGE / "process" / "base.py")
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pyshim.events import Publisher\n"
        "def f():\n    import google.protobuf.message\n    from ..ttrpc import status\n"
        "from . import exits\n"
        "from pyshim import task_service\n"
    )
    assert imports_of(source, "pyshim.process.sample") >= {
        "pyshim.events", "google.protobuf.message", "pyshim.ttrpc", "pyshim.process",
        "pyshim.task_service",
    }


def test_engine_defaults_match_the_containerd_options() -> None:
    from pyshim import options
    from pyshim.io.spool import DEFAULT_SPOOL_MAX
    from pyshim.runtime import DEFAULT_TIMEOUT

    assert options.DEFAULT_RUNC_TIMEOUT == DEFAULT_TIMEOUT
    assert options.DEFAULT_SPOOL_MAX == DEFAULT_SPOOL_MAX
