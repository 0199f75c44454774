"""Profile-guided placement of the code objects a daemon runs, in the fork-server.

Every call of a Python function writes its code object (3.11 to 3.13 frames take a strong
reference; the specialising interpreter also updates counters in its bytecode), so each code
object a daemon runs copies the page it lies on from the fork-server. Imports leave those
objects scattered among everything else each module made: after Start, ~300 code objects
written cost ~960 KiB of a daemon's private pages (docs/memory.md). Copies made one after
another, in the order a daemon first calls them, lie side by side: the same calls then copy
far fewer pages.

The fork-server records which functions its rehearsal (pyshim.shim.rehearsal) calls, gives
each of them a fresh copy of its code object, and then rehearses again so that the copies are
the ones warmed. The originals are kept: freeing them would leave holes among the shared pages
that later allocations (in every daemon) fill, copying those pages after all.
"""

from __future__ import annotations

import gc
import os
import sys
import types
from collections.abc import Callable

#: Set to 0 (in containerd's environment) for the fork-server not to move code objects.
ENABLE_VARIABLE = "PYSHIM_FORKSERVER_COLOCATE"

#: The code objects replaced, alive for good (see the module's docstring).
_retired: list[types.CodeType] = []


def enabled() -> bool:
    return os.environ.get(ENABLE_VARIABLE, "1") != "0"


def calls_during(action: Callable[[], object]) -> list[types.CodeType]:
    """The code objects of the Python functions `action()` called in this thread, in the order
    of their first call. The caller's profile function is restored afterwards."""
    first_calls: dict[types.CodeType, None] = {}

    def record(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call":
            first_calls.setdefault(frame.f_code, None)

    previous = sys.getprofile()
    sys.setprofile(record)
    try:
        action()
    finally:
        sys.setprofile(previous)
    return list(first_calls)


def relocate(codes: list[types.CodeType]) -> int:
    """Give every function whose code is in `codes` a copy of it, the copies allocated one
    after another in `codes`' order; returns how many code objects were copied.

    A code object no function holds (a comprehension's or a nested function's, made from its
    parent's constants at each call) stays where it is.
    """
    wanted = {id(code): code for code in codes}
    holders: dict[int, list[types.FunctionType]] = {}
    for obj in gc.get_objects():
        if type(obj) is types.FunctionType and id(obj.__code__) in wanted:
            holders.setdefault(id(obj.__code__), []).append(obj)
    moved = 0
    for code in codes:
        functions = holders.get(id(code))
        if not functions:
            continue
        copy = code.replace()
        for function in functions:
            function.__code__ = copy
        _retired.append(code)
        moved += 1
    return moved
