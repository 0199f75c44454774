"""A debug dump of the daemon's Python objects (address, size, type, owning module), for
`bench/pages.py` to map private pages to what they hold (see `daemon.MEMORY_DUMP_VARIABLE`).

Runs only in a child the daemon forked for it (its object addresses are the daemon's, and
what the walk writes is the child's): never imported by the daemon itself, where the import
alone would cost pages.
"""

from __future__ import annotations

import gc
import os
import sys
import types
from collections.abc import Iterable, Iterator

#: Where the dumps go: `<pid>.objects` (written as `.tmp`, then renamed).
DUMP_DIR = "/run/pyshim/memdump"

#: Containers whose __sizeof__ counts a separately allocated table: only their header is
#: at id(obj) (the table lives elsewhere, unknown to Python code).
_OUT_OF_LINE = (dict, list, set, frozenset, bytearray)


def dump_path(pid: int) -> str:
    return os.path.join(DUMP_DIR, f"{pid}.objects")


def write_dump(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8", errors="backslashreplace") as out:
        out.write("# address size type module name (pyshim.shim.memdump)\n")
        out.write("# modules: " + " ".join(sys.modules) + "\n")  # in import order
        for address, size, type_name, module, name in objects():
            out.write(f"{address:x} {size} {type_name} {module} {name}\n")
    os.rename(temp, path)


def objects() -> Iterator[tuple[int, int, str, str, str]]:
    """(start address, bytes, type, module, name) of every object reachable from the modules
    or tracked by the collector. The module is the first module whose namespace reaches the
    object, never crossing into another module or into a class or function defined in
    another one; an object no module reaches gets `~<module of its type>`. The name (see
    `short_name`) may be empty."""
    owner: dict[int, str] = {}
    found: dict[int, object] = {}
    modules = [(name, module) for name, module in list(sys.modules.items())
               if isinstance(module, types.ModuleType)]
    # Walked last: it keeps the code objects it replaced, whose constants the copies share.
    modules.sort(key=lambda item: item[0] in _WALKED_LAST)
    for name, module in modules:
        _claim(module, name, owner, found)
    for name, module in modules:
        _walk(vars(module), name, owner, found)
    for obj in gc.get_objects():
        if id(obj) not in owner:
            kind = type(obj)
            _walk(obj, f"~{getattr(kind, '__module__', '?')}", owner, found)
    for key, obj in found.items():
        start, size = _extent(obj)
        kind = type(obj)
        yield (start, size, f"{getattr(kind, '__module__', '?')}.{kind.__qualname__}",
               owner[key], short_name(obj))


#: Modules that hold other modules' objects (pyshim.shim.colocate's replaced code objects),
#: so these go to their own modules first.
_WALKED_LAST = frozenset({"pyshim.shim.colocate"})

#: Longest name written for an object (a string's or bytes' repr is cut there).
NAME_LIMIT = 60


def short_name(obj: object) -> str:
    """What tells this object from others of its type, on one line: a code object's
    qualified name with its file and first line, a function's or class's qualified name,
    the start of a string's or bytes' repr; empty for other objects."""
    if isinstance(obj, types.CodeType):
        filename = obj.co_filename.rsplit("/", 1)[-1]
        return f"{obj.co_qualname} ({filename}:{obj.co_firstlineno})"
    if isinstance(obj, (types.FunctionType, type)):
        name = getattr(obj, "__qualname__", "")
        return name if isinstance(name, str) else ""
    if isinstance(obj, (str, bytes)):
        text = repr(obj[:NAME_LIMIT])  # never the repr of a long object
        return text if len(obj) <= NAME_LIMIT else text + "..."
    return ""


def _claim(obj: object, module: str, owner: dict[int, str], found: dict[int, object]) -> bool:
    key = id(obj)
    if key in owner:
        return False
    owner[key] = module
    found[key] = obj
    return True


def _walk(root: object, module: str, owner: dict[int, str], found: dict[int, object]) -> None:
    _claim(root, module, owner, found)
    stack = [root]
    while stack:
        for child in _referents(stack.pop()):
            if isinstance(child, types.ModuleType):
                continue
            if isinstance(child, (type, types.FunctionType)):
                defined_in = getattr(child, "__module__", None)
                if isinstance(defined_in, str) and defined_in != module and (
                        defined_in in sys.modules):
                    continue  # its own module's walk claims it
            if _claim(child, module, owner, found):
                stack.append(child)


def _referents(obj: object) -> Iterable[object]:
    if isinstance(obj, types.CodeType):
        # Code objects are not tracked by the collector (no referents), but own these.
        return (obj.co_consts, obj.co_names, obj.co_filename, obj.co_name, obj.co_qualname,
                obj.co_linetable, obj.co_exceptiontable)
    return gc.get_referents(obj)


def _extent(obj: object) -> tuple[int, int]:
    """Where the object's own allocation starts and how long it is (the GC header before
    id(obj) included)."""
    kind = type(obj)
    try:
        own = kind.__sizeof__(obj)  # not obj.__sizeof__(): a class's is unbound
        header = sys.getsizeof(obj) - own
    except Exception:  # a broken __sizeof__ in some extension: its header at least
        own, header = kind.__basicsize__, 0
    inline = kind.__basicsize__ if isinstance(obj, _OUT_OF_LINE) else own
    return id(obj) - header, header + inline
