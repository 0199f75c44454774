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


def test_a_document_cut_off_inside_an_object_is_a_value_error_without_json_imported() -> None:
    """The C scanner reports such errors through json.decoder, which `start` and `delete`
    never import: without it, it failed with SystemError (a corrupt init.exit broke delete)."""
    import subprocess
    import sys
    from pathlib import Path

    program = (
        "import sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from pyshim import jsonlite\n"
        "assert 'json' not in sys.modules\n"
        "try:\n"
        "    jsonlite.loads('{\"status\": 42, \"exi')\n"
        "except ValueError as error:\n"
        "    print(type(error).__name__)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-I", "-S", "-c", program, str(root)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "JSONDecodeError"
