"""The parent's channels (spec §3.1, §4.3): fd variables as conmon parses them, and the bytes of
each message (vectors observed on conmon 2.1.6 with podman's and CRI-O's callers)."""

from __future__ import annotations

import json

import pytest

from pyshim.conmon.channels import (
    ATTACH_READY,
    MESSAGE_MAX,
    ChannelError,
    SyncMessage,
    channel_fd,
    decode,
    escape,
    exit_message,
    failure_message,
    message,
    result_key,
    runtime_failure_text,
)


@pytest.mark.parametrize(("value", "fd"), [
    ("3", 3), (" 3", 3), ("+5", 5), ("", 0), ("-1", -1), ("2147483648", -2147483648),
    ("007", 7),
])
def test_fd_numbers_as_strtol_base_10(value: str, fd: int) -> None:
    assert channel_fd({"_OCI_SYNCPIPE": value}, "_OCI_SYNCPIPE") == fd


@pytest.mark.parametrize(("value", "reason"), [
    ("3 ", "Success"), ("abc", "Success"), ("0x5", "Success"), (" ", "Success"), ("+", "Success"),
    ("99999999999999999999", "Numerical result out of range"),
])
def test_fd_garbage(value: str, reason: str) -> None:
    with pytest.raises(ChannelError) as caught:
        channel_fd({"_OCI_STARTPIPE": value}, "_OCI_STARTPIPE")
    assert caught.value.line == f"[conmon:e]: unable to parse _OCI_STARTPIPE {reason}\n".encode()


def test_unset_variable_means_no_channel() -> None:
    assert channel_fd({}, "_OCI_ATTACHPIPE") is None


def test_keys() -> None:
    assert result_key(api_version=True, exec_mode=True) == "data"
    assert result_key(api_version=True, exec_mode=False) == "data"
    assert result_key(api_version=False, exec_mode=True) == "exit_code"
    assert result_key(api_version=False, exec_mode=False) == "pid"


def test_observed_messages() -> None:
    assert message("data", 29483) == b'{"data": 29483}\n'
    assert exit_message("exit_code", 2) == b'{"exit_code": 2}\n'
    assert exit_message("exit_code", 0, timed_out=True) == (
        b'{"exit_code": -1, "message": "command timed out"}\n')
    assert ATTACH_READY == b'{"data": 0}\n'
    stderr = (b'time="2026-11-22T18:50:51Z" level=error msg="runc create failed: unable to start'
              b' container process: exec: \\"/nonexistent\\": stat /nonexistent: no such file or'
              b' directory"\n')
    assert failure_message("data", stderr) == (
        b'{"data": -1, "message": "time=\\"2026-11-22T18:50:51Z\\" level=error msg=\\"runc create'
        b' failed: unable to start container process: exec: \\\\\\"/nonexistent\\\\\\": stat '
        b'/nonexistent: no such file or directory\\"\\n"}\n')


def test_escaping_matches_conmon_byte_for_byte() -> None:
    # conmon 2.1.6 given bytes 0x01..0x7f then \x80\xff\xc3\xa9 on the runtime's stderr
    # (0x1f aside: conmon leaves it raw, which is not JSON).
    text = bytes(range(1, 128)) + b"\x80\xff\xc3\xa9 end"
    expected = (
        b"\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\u0008\\t\\n\\u000b\\u000c\\u000d"
        b"\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018\\u0019"
        b"\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f"
        b" !\\\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`"
        b"abcdefghijklmnopqrstuvwxyz{|}~\\u007f\x80\xff\xc3\xa9 end")
    assert escape(text) == expected


def test_messages_are_json_the_parents_decode() -> None:
    text = bytes(range(1, 128)) + "é".encode()
    (decoded,) = decode(message("data", -1, text))
    assert decoded == SyncMessage("data", -1, text.decode())


def test_runtime_stderr_is_a_c_string_of_one_read() -> None:
    assert runtime_failure_text(b"") is None
    assert runtime_failure_text(b"ab\0cd") == b"ab"
    assert runtime_failure_text(b"\0cd") == b""
    assert runtime_failure_text(b"x" * 10000) == b"x" * 8191
    assert failure_message("pid", b"") is None  # nothing written: no message, parent sees EOF
    assert failure_message("pid", b"\0") == b'{"pid": -1, "message": ""}\n'
    assert failure_message("data", b"oops", exec_status=2) == (
        b'{"data": -2, "message": "oops"}\n')


@pytest.mark.parametrize("text", [b"x" * 9000, b'"' * 5000, "é".encode() * 3000,
                                  b"\x01" * 2000])
def test_long_messages_fit_podmans_read(text: bytes) -> None:
    encoded = message("data", -1, text)
    assert len(encoded) <= MESSAGE_MAX and encoded.endswith(b'"}\n')
    (decoded,) = decode(encoded)
    assert decoded.text is not None and "\ufffd" not in decoded.text
    assert text.decode().startswith(decoded.text) and len(decoded.text) > 500
    assert json.loads(encoded)["data"] == -1


def test_unlimited_message_keeps_everything() -> None:
    assert len(message("data", -1, b"x" * 9000, limit=None)) == 9000 + len(
        b'{"data": -1, "message": ""}\n')
