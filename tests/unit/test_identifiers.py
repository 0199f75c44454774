"""containerd's identifier rules (the ids that become paths in the shim)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyshim.identifiers import MAX_LENGTH, PATTERN, InvalidIdentifier, validate


@pytest.mark.parametrize("good", ["c1", "a", "A-b_c.d", "x" * MAX_LENGTH, "0", "a.b.c", "init"])
def test_valid_identifiers_pass_unchanged(good: str) -> None:
    assert validate(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", ".", "..", "../x", "a/b", "-a", "a-", "a..b", "a_-b", " a", "a b", "é", "a\x00",
     "x" * (MAX_LENGTH + 1)],
)
def test_invalid_identifiers_are_refused_with_the_id_named(bad: str) -> None:
    with pytest.raises(InvalidIdentifier) as raised:
        validate(bad, "exec id")
    assert "exec id" in str(raised.value)


@given(st.text(alphabet="ab._-/ 1", max_size=12))
def test_the_check_is_containerds_regular_expression(candidate: str) -> None:
    expected = bool(re.fullmatch(PATTERN.strip("^$"), candidate)) and len(candidate) <= MAX_LENGTH
    try:
        validate(candidate)
        accepted = True
    except InvalidIdentifier:
        accepted = False
    assert accepted == expected
