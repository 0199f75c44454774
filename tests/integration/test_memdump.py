"""pyshim.shim.memdump's dump, read back by bench.pages: every object with its extent, type,
module and (where it has one) a name, in a real interpreter's file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.pages import parse_dump

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import sys
from pyshim.shim.memdump import write_dump

def memdump_marker():
    return "memdump marker constant"

write_dump(sys.argv[1])
"""


def test_a_dump_names_the_code_functions_and_strings_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "dumps" / "1.objects"
    subprocess.run([sys.executable, "-c", PROBE, str(path)], check=True, timeout=60, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert not path.with_name("1.objects.tmp").exists()
    with path.open(encoding="utf-8") as lines:
        dump = parse_dump(lines)
    assert "pyshim.shim.memdump" in dump.modules
    by_name: dict[str, list[tuple[int, int, str, str]]] = {}
    for obj in dump.objects:
        by_name.setdefault(dump.names.get(obj[0], ""), []).append(obj)
    [(_, code_size, code_type, code_module)] = by_name["memdump_marker (<string>:5)"]
    assert (code_type, code_module) == ("builtins.code", "__main__") and code_size > 0
    assert [obj[2] for obj in by_name["memdump_marker"]] == ["builtins.function"]
    assert [obj[2] for obj in by_name["'memdump marker constant'"]] == ["builtins.str"]
    starts = [obj[0] for obj in dump.objects]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
