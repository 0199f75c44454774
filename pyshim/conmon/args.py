"""conmon 2.1.6's command line, parsed by GLib's GOption rules (spec §2.1, §2.3): argv bytes in,
the values it set (attribute name -> value, for `options.ConmonOptions`), or the exact error or
help text GLib would print.

Pure: no IO, no environment. The locale's character set (GLib converts every string value from
it to UTF-8 and prints its own messages in it) comes in as a callable, asked only when a value
or a message is not plain ASCII. Lean on purpose: `--version` among other options is answered
after this parse, so it imports nothing the interpreter has not loaded already.
"""

from __future__ import annotations

import codecs

TYPE_CHECKING = False  # not typing's: importing typing would cost `--version` ~7 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: conmon's `--socket-dir-path` default (DEFAULT_SOCKET_PATH).
DEFAULT_SOCKET_DIR = "/var/run/crio"

# Option kinds (GOptionArg).
FLAG = "flag"  # G_OPTION_ARG_NONE: `--flag=anything` is accepted, the value ignored
STRING = "string"  # last one wins
ARRAY = "array"  # G_OPTION_ARG_STRING_ARRAY: accumulates in order
INT = "int"  # C int, strtol(s, &end, 0)
INT64 = "int64"  # g_ascii_strtoll(s, &end, 0)

class Entry:
    """One GOptionEntry (a plain class: dataclasses would cost `--version` ~10 ms to import)."""

    __slots__ = ("attribute", "help", "hidden", "kind", "long", "short")

    def __init__(self, long: str, short: str | None, kind: str, attribute: str, text: str,
                 hidden: bool = False) -> None:
        self.long = long
        self.short = short
        self.kind = kind
        self.attribute = attribute  # the ConmonOptions attribute (two entries may share one)
        self.help = text
        self.hidden = hidden


#: conmon 2.1.6's GOptionEntry table, in its order (the order of `--help`).
ENTRIES: tuple[Entry, ...] = (
    Entry("api-version", None, FLAG, "api_version", "Conmon API version to use"),
    Entry("bundle", "b", STRING, "bundle", "Location of the OCI Bundle path"),
    Entry("cid", "c", STRING, "cid", "Identification of Container"),
    Entry("conmon-pidfile", "P", STRING, "conmon_pidfile", "PID file for the conmon process"),
    Entry("container-pidfile", "p", STRING, "container_pidfile",
          "PID file for the initial pid inside of container"),
    Entry("cuuid", "u", STRING, "cuuid", "Container UUID"),
    Entry("exec", "e", FLAG, "exec", "Exec a command into a running container"),
    Entry("exec-attach", None, FLAG, "exec_attach", "Attach to an exec session"),
    Entry("exec-process-spec", None, STRING, "exec_process_spec",
          "Path to the process spec for execution"),
    Entry("exit-command", None, STRING, "exit_command",
          "Path to the program to execute when the container terminates its execution"),
    Entry("exit-command-arg", None, ARRAY, "exit_command_args",
          "Additional arg to pass to the exit command.  Can be specified multiple times"),
    Entry("exit-delay", None, INT, "exit_delay",
          "Delay before invoking the exit command (in seconds)"),
    Entry("exit-dir", None, STRING, "exit_dir",
          "Path to the directory where exit files are written"),
    Entry("leave-stdin-open", None, FLAG, "leave_stdin_open",
          "Leave stdin open when attached client disconnects"),
    Entry("log-level", None, STRING, "log_level", "Print debug logs based on log level"),
    Entry("log-path", "l", ARRAY, "log_paths", "Log file path"),
    Entry("log-size-max", None, INT64, "log_size_max", "Maximum size of log file"),
    Entry("log-global-size-max", None, INT64, "log_global_size_max",
          "Maximum size of all log files"),
    Entry("log-tag", None, STRING, "log_tag", "Additional tag to use for logging"),
    Entry("name", "n", STRING, "name", "Container name"),
    Entry("no-new-keyring", None, FLAG, "no_new_keyring",
          "Do not create a new session keyring for the container"),
    Entry("no-pivot", None, FLAG, "no_pivot", "Do not use pivot_root"),
    Entry("no-sync-log", None, FLAG, "no_sync_log",
          "Do not manually call sync on logs after container shutdown"),
    Entry("persist-dir", "0", STRING, "persist_dir",
          "Persistent directory for a container that can be used for storing container data"),
    Entry("pidfile", None, STRING, "container_pidfile", "PID file (DEPRECATED)",
          hidden=True),
    Entry("replace-listen-pid", None, FLAG, "replace_listen_pid",
          "Replace listen pid if set for oci-runtime pid"),
    Entry("restore", None, STRING, "restore", "Restore a container from a checkpoint"),
    Entry("restore-arg", None, ARRAY, "runtime_opts",
          "Additional arg to pass to the restore command. Can be specified multiple times. "
          "(DEPRECATED)", hidden=True),
    Entry("runtime", "r", STRING, "runtime", "Path to store runtime data for the container"),
    Entry("runtime-arg", None, ARRAY, "runtime_args",
          "Additional arg to pass to the runtime. Can be specified multiple times"),
    Entry("runtime-opt", None, ARRAY, "runtime_opts",
          "Additional opts to pass to the restore or exec command. Can be specified multiple "
          "times"),
    Entry("sdnotify-socket", None, STRING, "sdnotify_socket",
          "Path to the host's sd-notify socket to relay messages to"),
    Entry("socket-dir-path", None, STRING, "socket_dir_path",
          "Location of container attach sockets"),
    Entry("stdin", "i", FLAG, "stdin", "Open up a pipe to pass stdin to the container"),
    Entry("sync", None, FLAG, "sync",
          "Keep the main conmon process as its child by only forking once"),
    Entry("syslog", None, FLAG, "syslog", "Log to syslog (use with cgroupfs cgroup manager)"),
    Entry("systemd-cgroup", "s", FLAG, "systemd_cgroup",
          "Enable systemd cgroup manager, rather then use the cgroupfs directly"),
    Entry("terminal", "t", FLAG, "terminal", "Allocate a pseudo-TTY. The default is false"),
    Entry("timeout", "T", INT, "timeout", "Kill container after specified timeout in seconds."),
    Entry("version", None, FLAG, "version", "Print the version and exit"),
    Entry("full-attach", None, FLAG, "full_attach",
          "Don't truncate the path to the attach socket. This option causes conmon to ignore "
          "--socket-dir-path"),
    Entry("seccomp-notify-socket", None, STRING, "seccomp_notify_socket",
          "Path to the socket where the seccomp notification fd is received"),
    Entry("seccomp-notify-plugins", None, STRING, "seccomp_notify_plugins",
          "Plugins to use for managing the seccomp notifications"),
)
_BY_LONG = {entry.long: entry for entry in ENTRIES}
_BY_SHORT = {entry.short: entry for entry in ENTRIES if entry.short}


class ParseError(Exception):
    """GLib's `option parsing failed: <reason>`; `reason` is UTF-8 bytes (values verbatim)."""

    def __init__(self, reason: bytes) -> None:
        super().__init__(reason.decode("utf-8", "replace"))
        self.reason = reason


class HelpRequested(Exception):
    """`-h`, `-?`, `--help` or `--help-all` was met while parsing: GLib prints the help, exit 0."""


if TYPE_CHECKING:
    #: Returns the locale's codeset (nl_langinfo(CODESET) after setlocale(LC_ALL, "")).
    Codeset = Callable[[], str]
    #: What the command line set: attribute name -> bool, str, int, or tuple of str.
    Values = dict[str, "bool | str | int | tuple[str, ...]"]


def is_utf8(codeset: str) -> bool:
    return codeset.upper().replace("-", "").replace("_", "") == "UTF8"


def parse(argv: Sequence[bytes], codeset: Codeset) -> Values:
    """Parse argv[1:] (as bytes) the way g_option_context_parse does for conmon's table: the
    attributes the words set (arrays as tuples). Non-option words are ignored wherever they
    are (podman's `--api-version 1` leaves one); `--` ends the options."""
    values: dict[str, object] = {}
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == b"--":
            break
        if word.startswith(b"--"):
            index = _long_option(argv, index, values, codeset)
        elif word.startswith(b"-") and len(word) > 1:
            index = _short_options(argv, index, values, codeset)
        index += 1
    return {name: tuple(value) if isinstance(value, list) else value  # type: ignore[misc]
            for name, value in values.items()}


def _long_option(argv: Sequence[bytes], index: int, values: dict[str, object],
                 codeset: Codeset) -> int:
    word = argv[index]
    name, equals, attached = word[2:].partition(b"=")
    if word in (b"--help", b"--help-all"):
        raise HelpRequested
    entry = _BY_LONG.get(name.decode("latin-1"))
    if entry is None:
        raise ParseError(b"Unknown option " + word)
    option_name = b"--" + name
    if entry.kind == FLAG:
        values[entry.attribute] = True  # a `=value` is accepted and ignored
        return index
    if equals:
        value = attached
    elif index + 1 < len(argv):
        index += 1
        value = argv[index]  # taken whatever it looks like: `--runtime-arg --log=x`
    else:
        raise ParseError(b"Missing argument for " + option_name)
    _store(entry, value, option_name, values, codeset)
    return index


def _short_options(argv: Sequence[bytes], index: int, values: dict[str, object],
                   codeset: Codeset) -> int:
    """A group like `-ti` or `-tc VALUE`: each letter in turn; a letter that takes a value takes
    the next word, and only one letter of a group may."""
    word = argv[index]
    next_index = index
    for code in word[1:]:
        letter = chr(code)
        if letter in "h?":
            raise HelpRequested  # checked per letter in order: `-zh` fails on z first
        entry = _BY_SHORT.get(letter)
        if entry is None:
            raise ParseError(b"Unknown option " + word)
        option_name = b"-" + bytes([code])
        if entry.kind == FLAG:
            values[entry.attribute] = True
            continue
        if next_index > index:
            raise ParseError(b"Error parsing option " + option_name)
        if index + 1 >= len(argv):
            raise ParseError(b"Missing argument for " + option_name)
        next_index = index + 1
        _store(entry, argv[next_index], option_name, values, codeset)
    return next_index


def _store(entry: Entry, value: bytes, option_name: bytes, values: dict[str, object],
           codeset: Codeset) -> None:
    if entry.kind == INT:
        values[entry.attribute] = parse_c_integer(value, option_name, bits=32)
    elif entry.kind == INT64:
        values[entry.attribute] = parse_c_integer(value, option_name, bits=64)
    elif entry.kind == ARRAY:
        items = values.setdefault(entry.attribute, [])
        assert isinstance(items, list)
        items.append(_convert(value, codeset))
    else:
        values[entry.attribute] = _convert(value, codeset)


_CONVERSION_ERROR = b"Invalid byte sequence in conversion input"


def _convert(value: bytes, codeset: Codeset) -> str:
    """g_locale_to_utf8: the locale's bytes as text; plain ASCII needs no locale."""
    if value.isascii():
        return value.decode("ascii")
    charset = codeset()
    try:
        if is_utf8(charset):
            return value.decode("utf-8")
        return value.decode(codecs.lookup(charset).name)
    except (UnicodeDecodeError, LookupError):
        raise ParseError(_CONVERSION_ERROR) from None


_C_SPACE = b" \t\n\v\f\r"


def parse_c_integer(value: bytes, option_name: bytes, *, bits: int) -> int:
    """GLib's parse_int/parse_int64: strtol(value, &end, 0) must consume the whole (non-empty)
    string: leading C whitespace and a sign allowed, 0x hex, leading-0 octal."""
    text = value.lstrip(_C_SPACE)
    sign = 1
    if text[:1] in (b"+", b"-"):
        sign = -1 if text[:1] == b"-" else 1
        text = text[1:]
    digits, base = text, 10
    if text[:2].lower() == b"0x" and len(text) > 2 and _all_digits(text[2:], 16):
        digits, base = text[2:], 16
    elif text[:1] == b"0" and len(text) > 1:
        digits, base = text[1:], 8
    if not value or not digits or not _all_digits(digits, base):
        raise ParseError(b"Cannot parse integer value \xe2\x80\x9c" + value
                         + b"\xe2\x80\x9d for " + option_name)
    number = sign * int(digits.decode("ascii"), base)
    # strtol saturates at LONG_MIN/MAX (64 bits here); parse_int then checks G_MININT/MAXINT.
    limit = 1 << (bits - 1)
    if not -limit <= number < limit:
        raise ParseError(b"Integer value \xe2\x80\x9c" + value + b"\xe2\x80\x9d for "
                         + option_name + b" out of range")
    return number


def _all_digits(text: bytes, base: int) -> bool:
    allowed = b"0123456789abcdefABCDEF"[: base + (base - 10 if base > 10 else 0)]
    return bool(text) and all(byte in allowed for byte in text)


def help_text() -> bytes:
    """GLib's `--help` for conmon's table, as UTF-8 (print it with `glib_print`)."""
    lines = [b"Usage:", "  conmon [OPTION\u2026] - conmon utility".encode(), b"",
             b"Help Options:", _help_line("-h, --help", "Show help options"), b"",
             b"Application Options:"]
    for entry in ENTRIES:
        if entry.hidden:
            continue
        name = (f"-{entry.short}, " if entry.short else "") + f"--{entry.long}"
        lines.append(_help_line(name, entry.help))
    return b"\n".join(lines) + b"\n\n"


def _help_line(name: str, text: str) -> bytes:
    return f"  {name:<29}{text}".encode()


def glib_print(message: bytes, codeset: str) -> bytes:
    """What g_print writes for UTF-8 `message` in a locale of `codeset`: itself in a UTF-8
    locale; else converted with `?` for what the charset lacks, or, if `message` is not valid
    UTF-8, `[Invalid UTF-8] ` and the unsafe bytes as `\\xNN` (GLib's strdup_convert)."""
    if message.isascii() or is_utf8(codeset):
        return message
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        out = bytearray(b"[Invalid UTF-8] ")
        for position, byte in enumerate(message):
            lone_cr = byte == 0x0D and message[position + 1:position + 2] != b"\n"
            unsafe = (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte >= 0x7F
            out += b"\\x%02x" % byte if unsafe or lone_cr else bytes([byte])
        return bytes(out)
    try:
        return text.encode(codecs.lookup(codeset).name, "replace")
    except LookupError:
        return message
