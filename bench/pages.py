"""Where a running pyshim daemon's private memory goes: page attribution against its warm
fork-server, and (optionally) the Python objects on those pages.

A daemon is a fork of the fork-server, so at first every page is shared with it; a page
becomes private when either process writes it (copy on write; for Python, any reference
count written). For each present page of the daemon (``/proc/PID/pagemap``; needs root) it
tells:

* **copied**: private (mapped only by the daemon), and the fork-server has a different page
  at that address: a copy made after the fork;
* **new**: private, and the fork-server has no page there: memory the daemon allocated (or
  first touched) after the fork;
* **shared**: mapped by more processes (the fork-server, other daemons, KSM).

Per mapping (``/proc/PID/smaps``) it sums these into the top regions, and with ``--objects``
it maps the private pages to Python objects: the daemon must have been started with
``PYSHIM_MEMORY_DUMP=1`` in containerd's environment (then SIGUSR2 makes it fork a child that
writes every object's address, size, type and module: ``pyshim/shim/memdump.py``). The
pagemap is read *before* the dump is asked for, so the dump's own writes are not counted.
Each private page's KiB are shared out among the objects on it in proportion to their bytes
there (any of them being written copies the whole page); a page with no object counts as
``(no Python object)``: malloc'd buffers (uvloop, protobuf, OpenSSL), dict and list tables
(only object headers are located), free pymalloc blocks, C libraries' data.
The objects found written are listed one by one too, with a name that tells them apart (a
code object's qualified name, file and line; a function's or class's qualified name; the
start of a string's repr).

The module of an object is the first module whose namespace reaches it (a class or function
belongs to the module that defines it); ``~mod`` = reached from no module, named by the
module of its type. It ends with the ``smaps_rollup`` summary: RSS, PSS, USS
(Private_Clean + Private_Dirty).

Usage (root)::

    python -m bench.pages PID [--forkserver PID] [--objects] [--top N] [--json]

``--forkserver`` defaults to the daemon's parent when that is a pyshim fork-server (without
one, every private page counts as new).
"""

from __future__ import annotations

import argparse
import array
import bisect
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyshim.shim.daemon import MEMORY_DUMP_SIGNAL
from pyshim.shim.memdump import dump_path

PAGE = os.sysconf("SC_PAGE_SIZE")
PAGE_KIB = PAGE / 1024
_PFN_MASK = (1 << 55) - 1
_EXCLUSIVE = 1 << 56
_PRESENT = 1 << 63
FORKSERVER_MARKER = "pyshim.shim.forkserver"
NO_OBJECT = "(no Python object)"


@dataclass(frozen=True)
class Rollup:
    """``/proc/PID/smaps_rollup`` in KiB."""

    rss: int
    pss: int
    private_clean: int
    private_dirty: int

    @property
    def uss(self) -> int:
        """Unique set size: what the process alone maps, freed when it exits."""
        return self.private_clean + self.private_dirty


def rollup(pid: int) -> Rollup:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as file:
        for line in file:
            words = line.split()
            if len(words) == 3 and words[2] == "kB":
                fields[words[0].rstrip(":")] = int(words[1])
    return Rollup(fields.get("Rss", 0), fields.get("Pss", 0), fields.get("Private_Clean", 0),
                  fields.get("Private_Dirty", 0))


@dataclass
class Region:
    """One mapping of the daemon, with its pages counted by kind (in pages)."""

    start: int
    end: int
    perms: str
    name: str
    smaps_private_dirty_kib: int = 0
    copied: int = 0
    new: int = 0
    shared: int = 0
    #: addresses of its private pages (copied or new)
    private_pages: list[int] = field(default_factory=list, repr=False)
    #: addresses of its copied pages
    copied_pages: list[int] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        size_kib = (self.end - self.start) // 1024
        return f"{self.name} {self.perms} {self.start:x}-{self.end:x} ({size_kib} KiB)"

    @property
    def private_kib(self) -> float:
        return (self.copied + self.new) * PAGE_KIB


def regions(pid: int) -> list[Region]:
    """The mappings of ``/proc/PID/smaps`` with their Private_Dirty."""
    found: list[Region] = []
    with open(f"/proc/{pid}/smaps") as file:
        for line in file:
            words = line.split()
            if "-" in words[0] and len(words) >= 5 and not words[0].endswith(":"):
                start, end = (int(bound, 16) for bound in words[0].split("-"))
                name = " ".join(words[5:]) if len(words) > 5 else "[anon]"
                found.append(Region(start, end, words[1], name))
            elif words[0] == "Private_Dirty:" and found:
                found[-1].smaps_private_dirty_kib = int(words[1])
    return found


def _pagemap(file: int, start: int, end: int) -> array.array[int]:
    entries = array.array("Q")
    data = os.pread(file, (end - start) // PAGE * 8, start // PAGE * 8)
    entries.frombytes(data[: len(data) // 8 * 8])
    return entries


def count_pages(pid: int, forkserver: int | None) -> list[Region]:
    """The daemon's regions with every present page counted as copied, new or shared."""
    found = regions(pid)
    own = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    other = os.open(f"/proc/{forkserver}/pagemap", os.O_RDONLY) if forkserver else None
    try:
        for region in found:
            if region.name == "[vsyscall]":
                continue
            mine = _pagemap(own, region.start, region.end)
            theirs = _pagemap(other, region.start, region.end) if other is not None else None
            for index, entry in enumerate(mine):
                if not entry & _PRESENT:
                    continue
                if not entry & _EXCLUSIVE:
                    region.shared += 1
                    continue
                region.private_pages.append(region.start + index * PAGE)
                parent = theirs[index] if theirs is not None and index < len(theirs) else 0
                if parent & _PRESENT and (parent & _PFN_MASK) != (entry & _PFN_MASK):
                    region.copied += 1
                    region.copied_pages.append(region.start + index * PAGE)
                else:
                    region.new += 1
    finally:
        os.close(own)
        if other is not None:
            os.close(other)
    return found


def forkserver_of(pid: int) -> int | None:
    """The daemon's parent, if that is a pyshim fork-server."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        return None
    return parent if FORKSERVER_MARKER.encode() in command else None


def written_words(pid: int, forkserver: int, found: list[Region]) -> dict[int, list[int]]:
    """Per copied page, the addresses of the 8-byte words whose content differs between the
    daemon and the fork-server: what was written since the fork (by either of them)."""
    changed: dict[int, list[int]] = {}
    own = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    other = os.open(f"/proc/{forkserver}/mem", os.O_RDONLY)
    try:
        for region in found:
            for page in region.copied_pages:
                try:
                    mine = os.pread(own, PAGE, page)
                    theirs = os.pread(other, PAGE, page)
                except OSError:
                    continue
                if mine == theirs:
                    changed[page] = []
                    continue
                a, b = memoryview(mine).cast("Q"), memoryview(theirs).cast("Q")
                changed[page] = [page + 8 * index
                                 for index in range(len(a)) if a[index] != b[index]]
    finally:
        os.close(own)
        os.close(other)
    return changed


# ----------------------------------------------------------------------------- objects


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (SigCgt of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


class DumpUnavailable(RuntimeError):
    """The daemon cannot dump its objects (not started with PYSHIM_MEMORY_DUMP=1)."""


@dataclass
class Dump:
    """A daemon's objects, (start, bytes, type, module) sorted by start, and its modules."""

    objects: list[tuple[int, int, str, str]]
    #: sys.modules, in import order
    modules: list[str]
    #: start → what tells the object apart (memdump.short_name), where it has one
    names: dict[int, str] = field(default_factory=dict)


def request_objects(pid: int, timeout: float = 60.0) -> Dump:
    """Ask the daemon for its object dump and read it. The dump file is removed after."""
    if not catches(pid, MEMORY_DUMP_SIGNAL):
        raise DumpUnavailable(
            f"pid {pid} does not catch {MEMORY_DUMP_SIGNAL.name}: start containerd with "
            "PYSHIM_MEMORY_DUMP=1 in its environment for object attribution")
    path = Path(dump_path(pid))
    path.unlink(missing_ok=True)
    os.kill(pid, MEMORY_DUMP_SIGNAL)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise DumpUnavailable(f"no object dump {path} from pid {pid} within {timeout} s")
        time.sleep(0.05)
    try:
        with path.open(encoding="utf-8") as dump:
            return parse_dump(dump)
    finally:
        path.unlink(missing_ok=True)


def parse_dump(lines: Iterable[str]) -> Dump:
    """A dump's lines (pyshim.shim.memdump.write_dump) as a Dump."""
    found = []
    modules: list[str] = []
    names: dict[int, str] = {}
    for line in lines:
        if line.startswith("# modules: "):
            modules = line.split()[2:]
        if line.startswith("#"):
            continue
        address, size, type_name, module, name = line.rstrip("\n").split(" ", 4)
        start = int(address, 16)
        found.append((start, int(size), type_name, module))
        if name:
            names[start] = name
    found.sort()
    return Dump(found, modules, names)


#: What the fork-server imports before it forks (pyshim/shim/forkserver.py main), replayed in
#: a fresh interpreter: the modules a daemon finds already there.
_FORKSERVER_IMPORTS = (
    "import sys; import pyshim.shim.forkserver as server\n"
    "server.forkclient.code_stamp()\n"
    "for name in server.PRELOAD: __import__(name)\n"
    "from pyshim.shim import rehearsal\n"  # imported next, rehearsal on or off
    "print(' '.join(sorted(sys.modules)))"
)


def forkserver_modules() -> set[str]:
    """The modules of a fresh fork-server (same interpreter flags as forkclient.launch)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    output = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         f"import sys; sys.path[:0] = {[str(root), *_site_dirs()]!r}\n" + _FORKSERVER_IMPORTS],
        capture_output=True, text=True, timeout=60, check=True).stdout
    return set(output.split())


def _site_dirs() -> list[str]:
    return [entry for entry in sys.path if entry.endswith("site-packages")]


@dataclass
class Attribution:
    """Private KiB by object type and by module, and how many private KiB had no object at
    all, by region; `written` counts the objects found written (per type)."""

    by_type: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    by_module: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    no_object: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    written: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: (start, type, module) of each object found written → its private KiB
    by_object: defaultdict[tuple[int, str, str], float] = field(
        default_factory=lambda: defaultdict(float))
    #: copied pages whose bytes differ from the fork-server's / equal to them (written and
    #: then restored, e.g. a reference count up and down again) / new pages
    pages_diff: int = 0
    pages_same: int = 0
    pages_new: int = 0


def attribute(found: list[Region], objects: list[tuple[int, int, str, str]],
              written: dict[int, list[int]] | None = None) -> Attribution:
    """Share each private page's KiB among objects: among the objects holding a word that
    differs from the fork-server's page where there is one (they are what copied it), else
    among all objects on the page in proportion to their bytes there."""
    starts = [start for start, _, _, _ in objects]
    # Look back far enough for any object that could still reach into the page.
    longest = max((size for _, size, _, _ in objects), default=0)
    result = Attribution()
    for region in found:
        for page in region.private_pages:
            page_end = page + PAGE
            first = bisect.bisect_left(starts, page - longest)
            last = bisect.bisect_left(starts, page_end)
            overlaps = [(start, size, type_name, module)
                        for start, size, type_name, module in objects[first:last]
                        if min(start + size, page_end) > max(start, page)]
            words = written.get(page) if written is not None else None
            if words is None:
                result.pages_new += 1
            elif not words:
                result.pages_same += 1
            else:
                result.pages_diff += 1
                owners = {next((index for index, (start, size, _, _) in enumerate(overlaps)
                                if start <= word < start + size), None) for word in words}
                share = PAGE_KIB / len(owners)
                for index in owners:
                    if index is None:
                        result.no_object[region.name] += share
                        continue
                    start, _, type_name, module = overlaps[index]
                    result.by_object[(start, type_name, module)] += share
                    result.by_type[type_name] += share
                    result.by_module[module] += share
                    result.written[type_name] += 1
                continue
            weights = [(min(start + size, page_end) - max(start, page), type_name, module)
                       for start, size, type_name, module in overlaps]
            total = sum(weight for weight, _, _ in weights)
            if not total:
                result.no_object[region.name] += PAGE_KIB
                continue
            for weight, type_name, module in weights:
                result.by_type[type_name] += PAGE_KIB * weight / total
                result.by_module[module] += PAGE_KIB * weight / total
    if result.no_object:
        result.by_type[NO_OBJECT] += sum(result.no_object.values())
        result.by_module[NO_OBJECT] += sum(result.no_object.values())
    return result


# ------------------------------------------------------------------------------ report


def most(values: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(values.items(), key=lambda item: -item[1])


def region_totals(found: list[Region]) -> list[tuple[str, float, float, float]]:
    """(region name, copied KiB, new KiB, shared KiB) per distinct name, most private first."""
    totals: dict[str, list[float]] = {}
    for region in found:
        row = totals.setdefault(region.name, [0.0, 0.0, 0.0])
        row[0] += region.copied * PAGE_KIB
        row[1] += region.new * PAGE_KIB
        row[2] += region.shared * PAGE_KIB
    return sorted(((name, *values) for name, values in totals.items()),  # type: ignore[misc]
                  key=lambda row: -(row[1] + row[2]))


def written_objects(attribution: Attribution, names: dict[int, str],
                    top: int) -> list[tuple[float, str, str, str]]:
    """(private KiB, type, module, name) of the objects found written, most KiB first."""
    rows = sorted(attribution.by_object.items(), key=lambda item: (-item[1], item[0]))
    return [(kib, type_name, module, names.get(start, ""))
            for (start, type_name, module), kib in rows[:top]]


def report(pid: int, forkserver: int | None, found: list[Region], summary: Rollup,
           attribution: Attribution | None, top: int,
           names: dict[int, str] | None = None) -> str:
    copied = sum(region.copied for region in found) * PAGE_KIB
    new = sum(region.new for region in found) * PAGE_KIB
    lines = [
        f"daemon pid {pid}, fork-server "
        + (f"pid {forkserver}" if forkserver else "none (every private page counts as new)"),
        f"smaps_rollup: RSS {summary.rss} KiB, PSS {summary.pss} KiB, USS {summary.uss} KiB "
        f"(Private_Dirty {summary.private_dirty}, Private_Clean {summary.private_clean})",
        f"pagemap: private {copied + new:.0f} KiB = copied from the fork-server {copied:.0f} "
        f"KiB + new since the fork {new:.0f} KiB",
        "",
        f"top regions by private KiB (of {len(found)} mappings):",
        f"  {'copied':>8} {'new':>8} {'shared':>8}  region",
    ]
    for name, copied_kib, new_kib, shared_kib in region_totals(found)[:top]:
        lines.append(f"  {copied_kib:8.0f} {new_kib:8.0f} {shared_kib:8.0f}  {name}")
    lines += ["", "top mappings by private KiB:"]
    for region in sorted(found, key=lambda region: -region.private_kib)[:top]:
        if region.private_kib:
            lines.append(f"  {region.private_kib:8.0f}  {region.label}")
    if attribution is not None:
        lines += ["", f"private pages: {attribution.pages_diff} copied and differing from the "
                  f"fork-server's (their KiB go to the objects holding a changed word), "
                  f"{attribution.pages_same} copied but equal again (written and restored: "
                  f"shared out among all objects on them), {attribution.pages_new} new"]
        for title, counter in (("modules by private KiB", attribution.by_module),
                               ("object types by private KiB", attribution.by_type),
                               (f"regions of private KiB with {NO_OBJECT}",
                                attribution.no_object),
                               ("types of objects found written (how many)",
                                attribution.written)):
            lines += ["", f"top {title}:"]
            lines += [f"  {kib:8.1f}  {name}" for name, kib in most(counter)[:top]]
        if attribution.by_object:
            lines += ["", "top objects found written, by private KiB (type, module, name):"]
            lines += [f"  {kib:8.1f}  {type_name}  {module}  {name}".rstrip()
                      for kib, type_name, module, name
                      in written_objects(attribution, names or {}, top)]
    return "\n".join(lines)


def as_json(pid: int, forkserver: int | None, found: list[Region], summary: Rollup,
            attribution: Attribution | None, names: dict[int, str] | None = None,
            top: int = 25) -> str:
    return json.dumps({
        "pid": pid, "forkserver": forkserver,
        "rollup_kib": {**asdict(summary), "uss": summary.uss},
        "regions_kib": [{"name": name, "copied": c, "new": n, "shared": s}
                        for name, c, n, s in region_totals(found)],
        "modules_kib": dict(most(attribution.by_module)) if attribution else None,
        "types_kib": dict(most(attribution.by_type)) if attribution else None,
        "written_objects": [
            {"kib": kib, "type": type_name, "module": module, "name": name}
            for kib, type_name, module, name in written_objects(attribution, names or {}, top)
        ] if attribution else None,
    }, indent=1)


def private_pages(pid: int, forkserver: int | None) -> set[int]:
    """Addresses of the daemon's private pages now (for `analyse(since=...)`)."""
    return {page for region in count_pages(pid, forkserver) for page in region.private_pages}


def leave_out(found: list[Region], pages: set[int]) -> None:
    """Drop these pages from the regions' private pages and counts (they were private
    before the step being explained)."""
    for region in found:
        copied = set(region.copied_pages)
        kept = [page for page in region.private_pages if page not in pages]
        region.copied_pages = [page for page in kept if page in copied]
        region.copied = len(region.copied_pages)
        region.new = len(kept) - region.copied
        region.private_pages = kept


def analyse(pid: int, forkserver: int | None, objects: bool, top: int = 25,
            as_json_output: bool = False, since: set[int] | None = None) -> str:
    """The whole report for one daemon (pages first, then the dump, if asked for). With
    `since` (from `private_pages` before some step), only the pages that became private
    after it are attributed: what that step cost."""
    summary = rollup(pid)
    found = count_pages(pid, forkserver)
    if since is not None:
        leave_out(found, since)
    attribution = None
    late: list[str] = []
    names: dict[int, str] = {}
    if objects:
        written = written_words(pid, forkserver, found) if forkserver else None
        dump = request_objects(pid)
        attribution = attribute(found, dump.objects, written)
        names = dump.names
        before = forkserver_modules()
        late = [name for name in dump.modules if name not in before]
    if as_json_output:
        return as_json(pid, forkserver, found, summary, attribution, names, top)
    text = report(pid, forkserver, found, summary, attribution, top, names)
    if since is not None:
        text = ("(only the pages that became private since the previous step; the "
                "smaps_rollup line is the whole daemon's)\n" + text)
    if objects:
        text += ("\n\nmodules imported after the fork (not in a fresh fork-server), in "
                 "import order: "
                 + (", ".join(late) or "none"))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pid", type=int, help="the shim daemon")
    parser.add_argument("--forkserver", type=int,
                        help="fork-server pid (default: the daemon's parent, if it is one)")
    parser.add_argument("--objects", action="store_true",
                        help="map private pages to Python objects (needs PYSHIM_MEMORY_DUMP=1)")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--json", action="store_true", help="JSON instead of tables")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench.pages: needs root (pagemap PFNs)")
    forkserver = args.forkserver if args.forkserver else forkserver_of(args.pid)
    try:
        print(analyse(args.pid, forkserver, args.objects, args.top, args.json))
    except DumpUnavailable as error:
        sys.exit(f"bench.pages: {error}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends quietly
    sys.exit(main())
