"""logfmt lines as containerd/logrus writes them."""

from __future__ import annotations

import io
import logging
import re

from pyshim.logfmt import LogfmtFormatter, configure, quote, rfc3339_nano


def test_quote_leaves_safe_values_bare_and_escapes_the_rest() -> None:
    assert quote("io.containerd.pyshim.v1") == "io.containerd.pyshim.v1"
    assert quote(1234) == "1234"
    assert quote("two words") == '"two words"'
    assert quote('say "hi"\n') == '"say \\"hi\\"\\n"'
    assert quote("a=b") == '"a=b"'
    assert quote("bell\x07") == '"bell\\x07"'
    assert quote("") == '""'


def test_timestamps_have_nine_fraction_digits_in_utc() -> None:
    assert rfc3339_nano(1700000000_000000005) == "2023-11-14T22:13:20.000000005Z"


def test_records_become_logfmt_lines_with_fields() -> None:
    formatter = LogfmtFormatter({"runtime": "io.containerd.pyshim.v1"})
    record = logging.LogRecord("pyshim", logging.WARNING, __file__, 1, "shim %s", ("up",), None)
    record.fields = {"namespace": "default", "pid": 42}
    line = formatter.format(record)
    assert re.fullmatch(
        r'time="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z" level=warning msg="shim up" '
        r"runtime=io\.containerd\.pyshim\.v1 namespace=default pid=42",
        line,
    ), line


def test_configure_routes_pyshim_loggers() -> None:
    stream = io.StringIO()
    configure(stream, fields={"pid": 7})
    try:
        logging.getLogger("pyshim.ttrpc.server").info("serving")
        logging.getLogger("pyshim.ttrpc.server").debug("hidden at info level")
    finally:
        logging.getLogger("pyshim").handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert 'level=info msg=serving pid=7' in lines[0]


def test_the_time_field_is_the_records_time_as_rfc3339_nano() -> None:
    arguments = ({"a": "x", "b": 1},)
    record = logging.LogRecord("pyshim", logging.INFO, __file__, 1, "%(a)s=%(b)d", arguments,
                               None)
    record.time_ns = 1700000000_000000005
    line = LogfmtFormatter().format(record)
    assert line == f'time="{rfc3339_nano(1700000000_000000005)}" level=info msg="x=1"'
