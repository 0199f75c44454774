"""jsonlite.loads agrees with json.loads, errors included (as ValueError)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyshim import jsonlite

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(JSON_VALUES, st.sampled_from([None, 2]))
def test_round_trips_like_json(value: object, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.loads(f" \n{text}\t ".encode()) == value


def test_constants_as_json_reads_them() -> None:
    result = jsonlite.loads('[NaN, Infinity, -Infinity]')
    assert isinstance(result, list)
    assert math.isnan(result[0]) and result[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize("text", ["", "   ", "{", '{"a": 1} x', "[1,]", "'a'", '"\x01"'])
def test_what_json_refuses_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonlite.loads(text)


def test_does_not_import_json() -> None:
    code = (f"import sys; sys.path[:0] = {sys.path!r}; import pyshim.jsonlite as j; "
            "j.loads('{\"a\": [1]}'); print('re' in sys.modules, 'json' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
