"""The parent's channels (spec §3.1, §4.3): which fds `_OCI_SYNCPIPE`, `_OCI_STARTPIPE` and
`_OCI_ATTACHPIPE` name, and the bytes of every message the monitor sends on them.

Sans-IO: strings in, numbers and bytes out. Writing (one write per message, EPIPE not fatal)
and FD_CLOEXEC are the caller's (`launch.py`). Messages are byte-for-byte conmon 2.1.6's, except
that 0x1f is escaped (2.1.6 leaves it raw: invalid JSON) and a message is cut to fit podman's
4096-byte read (2.1.6 sends up to 8 KiB of runtime stderr, which podman's reader truncates).
"""

from __future__ import annotations

import errno
import os

from pyshim.conmon.frozen import Frozen

TYPE_CHECKING = False  # lean: every launched process imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping

START_PIPE = "_OCI_STARTPIPE"
SYNC_PIPE = "_OCI_SYNCPIPE"
ATTACH_PIPE = "_OCI_ATTACHPIPE"

#: conmon reads the runtime's stderr with one read of this many bytes (BUF_SIZE - 1).
RUNTIME_STDERR_MAX = 8191
#: podman reads a sync message with a 4096-byte buffered reader; on SEQPACKET a longer packet
#: is cut, and its JSON with it.
MESSAGE_MAX = 4096
#: The message of the exit report when `--timeout` killed the process.
TIMED_OUT_MESSAGE = b"command timed out"


class ChannelError(Exception):
    """A channel variable conmon would refuse: exit 1 with `line` on stderr."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("utf-8", "replace").rstrip("\n"))
        self.line = line


def channel_fd(environ: Mapping[str, str], name: str) -> int | None:
    """The fd number `name` holds, None if it is not set (standalone use: no such channel).

    conmon parses it with strtol(value, &end, 10), requiring the whole string: leading
    whitespace and a sign are allowed, and an empty value is fd 0. The long is then cut to a
    C int, as conmon's assignment does.
    """
    value = environ.get(name)
    if value is None:
        return None
    text = value.lstrip(" \t\n\v\f\r")
    sign = -1 if text[:1] == "-" else 1
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits:
        if value == "":
            return 0  # strtol consumed nothing and stopped at the terminating NUL
        raise _parse_error(name, 0)
    if not (digits.isascii() and digits.isdigit()):
        raise _parse_error(name, 0)
    number = sign * int(digits)
    if not -(1 << 63) <= number < (1 << 63):
        raise _parse_error(name, errno.ERANGE)
    return (number + (1 << 31)) % (1 << 32) - (1 << 31)


def _parse_error(name: str, code: int) -> ChannelError:
    # pexitf(): the message, then strerror(errno) ("Success" when strtol set none).
    return ChannelError(f"[conmon:e]: unable to parse {name} {os.strerror(code)}\n".encode())


def cloexec_error(name: str, code: int) -> ChannelError:
    """fcntl(fd, F_SETFD, FD_CLOEXEC) failed (the fd is not open)."""
    return ChannelError(f"[conmon:e]: unable to make {name} CLOEXEC {os.strerror(code)}\n"
                        .encode())


def result_key(*, api_version: bool, exec_mode: bool) -> str:
    """The JSON key of every sync/attach message: `data` for API 1, else `exit_code` (legacy
    exec, CRI-O's ExecSync) or `pid` (legacy create, CRI-O)."""
    if api_version:
        return "data"
    return "exit_code" if exec_mode else "pid"


_ESCAPES = {0x5C: b"\\\\", 0x22: b'\\"', 0x0A: b"\\n", 0x09: b"\\t"}


def escape(text: bytes) -> bytes:
    """conmon's JSON string escaping: `\\`, `"`, newline, tab by name; other control bytes and
    0x7f as `\\u00xx`; every other byte verbatim (UTF-8, valid or not, passes through)."""
    out = bytearray()
    for byte in text:
        named = _ESCAPES.get(byte)
        if named is not None:
            out += named
        elif byte < 0x20 or byte == 0x7F:
            out += b"\\u%04x" % byte
        else:
            out.append(byte)
    return bytes(out)


def message(key: str, value: int, text: bytes | None = None, *,
            limit: int | None = MESSAGE_MAX) -> bytes:
    """One message, newline-terminated, with conmon's spacing: `{"data": 7}` or
    `{"data": -1, "message": "..."}`. `text` None means no message field; b"" gives an empty
    one (conmon sends that when the runtime's stderr started with a NUL). With `limit`, the text
    is cut (never inside an escape or a UTF-8 sequence) so the whole message fits."""
    if text is None:
        return b'{"%s": %d}\n' % (key.encode(), value)
    head = b'{"%s": %d, "message": "' % (key.encode(), value)
    tail = b'"}\n'
    escaped = escape(text)
    if limit is not None and len(head) + len(escaped) + len(tail) > limit:
        escaped = _cut(text, limit - len(head) - len(tail))
    return head + escaped + tail


def _cut(text: bytes, room: int) -> bytes:
    """The longest escaped prefix of `text` that fits `room` bytes and ends on a character
    boundary (a UTF-8 continuation byte is never the first one dropped)."""
    out = bytearray()
    end = 0
    for position, byte in enumerate(text):
        piece = escape(bytes([byte]))
        if len(out) + len(piece) > room:
            break
        out += piece
        if position + 1 == len(text) or text[position + 1] & 0xC0 != 0x80:
            end = len(out)
    return bytes(out[:end])


def runtime_failure_text(stderr: bytes) -> bytes | None:
    """What conmon sends as `message` when the runtime failed: its first read of the runtime's
    stderr (up to 8191 bytes), up to the first NUL (it is a C string). None: nothing was read,
    and conmon then sends no message at all (the parent sees EOF)."""
    if not stderr:
        return None
    return stderr[:RUNTIME_STDERR_MAX].split(b"\0", 1)[0]


def pid_message(key: str, pid: int) -> bytes:
    return message(key, pid)


def failure_message(key: str, runtime_stderr: bytes, *, exec_status: int = 0) -> bytes | None:
    """The runtime failed: `{"<key>": -1, "message": <its stderr>}`, or None if it wrote
    nothing. An exec whose process had already been reaped with a non-zero wait status S
    reports -S instead of -1 (conmon's behaviour, rare)."""
    text = runtime_failure_text(runtime_stderr)
    if text is None:
        return None
    return message(key, -exec_status if exec_status > 0 else -1, text)


def exit_message(key: str, status: int, *, timed_out: bool = False) -> bytes:
    """Exec mode's report of the process's end: its exit status, or -1 and the timeout text."""
    if timed_out:
        return message(key, -1, TIMED_OUT_MESSAGE)
    return message(key, status)


#: `_OCI_ATTACHPIPE`: the exec session's attach socket is ready (`--exec-attach` needs API 1).
ATTACH_READY = message("data", 0)


class SyncMessage(Frozen):
    """One message as podman or CRI-O decodes it."""

    __slots__ = ("key", "text", "value")
    key: str
    value: int
    text: str | None

    def __init__(self, key: str, value: int, text: str | None = None) -> None:
        self._set(key=key, value=value, text=text)


def decode(data: bytes) -> list[SyncMessage]:
    """Split a channel's bytes into messages and decode each as a JSON object with one integer
    field and an optional `message` (what the parents do; used by tests and test parents)."""
    import json

    messages = []
    for line in data.split(b"\n"):
        if not line:
            continue
        fields = json.loads(line.decode("utf-8", "replace"))
        if not isinstance(fields, dict):
            raise ValueError(f"not a JSON object: {line!r}")
        text = fields.pop("message", None)
        (key, value), = fields.items()
        if not isinstance(value, int) or not (text is None or isinstance(text, str)):
            raise ValueError(f"unexpected field types: {line!r}")
        messages.append(SyncMessage(key, value, text))
    return messages
