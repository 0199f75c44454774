"""bench.pages' attribution of private pages to objects (pure logic on made-up pages and
objects: which objects a page's KiB go to, and what counts as no object)."""

from __future__ import annotations

import pytest

from bench.pages import (
    NO_OBJECT,
    PAGE,
    PAGE_KIB,
    Region,
    attribute,
    parse_dump,
    written_objects,
)
from pyshim.shim.memdump import NAME_LIMIT, short_name

BASE = 0x10_0000


def region(*pages: int, copied: bool) -> Region:
    found = Region(BASE, BASE + 16 * PAGE, "rw-p", "[heap]")
    found.private_pages = [BASE + index * PAGE for index in pages]
    if copied:
        found.copied_pages = list(found.private_pages)
    return found


def test_a_differing_page_goes_to_the_objects_holding_a_changed_word() -> None:
    objects = [(BASE, 64, "builtins.str", "a"), (BASE + 64, 64, "builtins.code", "b"),
               (BASE + 128, 3968, "builtins.bytes", "c")]
    written = {BASE: [BASE + 8, BASE + 16, BASE + 72]}  # two words of the str, one of code
    result = attribute([region(0, copied=True)], objects, written)
    assert result.by_type == {"builtins.str": PAGE_KIB / 2, "builtins.code": PAGE_KIB / 2}
    assert result.by_module == {"a": PAGE_KIB / 2, "b": PAGE_KIB / 2}
    assert result.written == {"builtins.str": 1, "builtins.code": 1}
    assert (result.pages_diff, result.pages_same, result.pages_new) == (1, 0, 0)


def test_a_restored_or_new_page_is_shared_by_bytes_among_its_objects() -> None:
    # The tuple covers page 0 and the first KiB of page 1, the int the next KiB of page 1.
    objects = [(BASE, PAGE + 1024, "builtins.tuple", "t"),
               (BASE + PAGE + 1024, 1024, "builtins.int", "i")]
    result = attribute([region(0, 1, copied=True)], objects, {BASE: [], BASE + PAGE: []})
    assert result.by_type["builtins.tuple"] == pytest.approx(PAGE_KIB + PAGE_KIB / 2)
    assert result.by_type["builtins.int"] == pytest.approx(PAGE_KIB / 2)
    assert result.pages_same == 2
    fresh = attribute([region(0, copied=False)], objects, None)
    assert fresh.pages_new == 1
    assert fresh.by_type == {"builtins.tuple": PAGE_KIB}


def test_pages_and_words_without_objects_count_as_no_object_by_region() -> None:
    objects = [(BASE + 5 * PAGE, 64, "builtins.str", "a")]
    written = {BASE: [BASE + 8], BASE + 5 * PAGE: [BASE + 5 * PAGE + 8, BASE + 5 * PAGE + 512]}
    result = attribute([region(0, 5, copied=True)], objects, written)
    # Page 0: nothing there at all; page 5: one word in the str, one outside any object.
    assert result.no_object == {"[heap]": PAGE_KIB + PAGE_KIB / 2}
    assert result.by_type == {NO_OBJECT: PAGE_KIB + PAGE_KIB / 2, "builtins.str": PAGE_KIB / 2}


def test_each_written_object_is_listed_with_its_name_most_kib_first() -> None:
    objects = [(BASE, 64, "builtins.str", "a"), (BASE + 64, 64, "builtins.code", "b"),
               (BASE + PAGE, 64, "builtins.code", "b")]
    written = {BASE: [BASE + 8, BASE + 72], BASE + PAGE: [BASE + PAGE + 8]}
    result = attribute([region(0, 1, copied=True)], objects, written)
    names = {BASE: "'key'", BASE + PAGE: "serve (daemon.py:176)"}
    assert written_objects(result, names, top=5) == [
        (PAGE_KIB, "builtins.code", "b", "serve (daemon.py:176)"),
        (PAGE_KIB / 2, "builtins.str", "a", "'key'"),
        (PAGE_KIB / 2, "builtins.code", "b", ""),  # no name given for it
    ]
    assert len(written_objects(result, names, top=1)) == 1


def test_a_dump_is_parsed_with_names_that_may_hold_spaces_or_be_empty() -> None:
    dump = parse_dump([
        "# address size type module name (pyshim.shim.memdump)\n",
        "# modules: sys builtins pyshim\n",
        "2000 64 builtins.code pyshim.shim.daemon serve (daemon.py:176)\n",
        "1000 32 builtins.int ~builtins \n",
        "3000 80 builtins.str logging 'a b  c'\n",
    ])
    assert dump.modules == ["sys", "builtins", "pyshim"]
    assert dump.objects == [(0x1000, 32, "builtins.int", "~builtins"),
                            (0x2000, 64, "builtins.code", "pyshim.shim.daemon"),
                            (0x3000, 80, "builtins.str", "logging")]
    assert dump.names == {0x2000: "serve (daemon.py:176)", 0x3000: "'a b  c'"}


class Named:
    def method(self) -> None:
        pass


def test_short_names_tell_objects_of_one_type_apart_on_one_line() -> None:
    code = Named.method.__code__
    assert short_name(code) == f"Named.method (test_pages_attribution.py:{code.co_firstlineno})"
    assert short_name(Named.method) == "Named.method"
    assert short_name(Named) == "Named"
    assert short_name("two\nlines") == "'two\\nlines'"
    assert short_name(b"\x00raw") == "b'\\x00raw'"
    long_text = "x" * (NAME_LIMIT + 10)
    assert short_name(long_text) == repr("x" * NAME_LIMIT) + "..."
    assert short_name(12345) == short_name([1, 2]) == ""
