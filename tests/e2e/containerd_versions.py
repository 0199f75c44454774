"""Which containerd the e2e tests run against, and where its releases behave differently.

The tests run against Debian's containerd: 1.6 on Debian 12, 1.7 on Debian 13. A test whose
expectation differs between the two reads :func:`containerd_behaviour` and asserts what the
running release does (it never skips the check on one of them). Each difference below was
observed with Debian's builds (1.6.20~ds1, 1.7.24~ds1).
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

#: Releases whose behaviour is recorded in :data:`BEHAVIOURS` (major, minor).
SUPPORTED_RELEASES: tuple[tuple[int, int], ...] = ((1, 6), (1, 7))


@dataclass(frozen=True)
class ContainerdBehaviour:
    """What one containerd release does where the tests can tell releases apart."""

    #: Plugins that load but report ``skip`` in ``ctr plugins ls`` with our configuration
    #: (1.7's blockfile snapshotter needs a scratch file configured).
    plugins_skipped_unconfigured: frozenset[str]
    #: Namespace of the ``/namespaces/create|update`` envelope: 1.6 publishes them under the
    #: caller's namespace (``default``), 1.7 under the namespace being changed.
    namespace_events_under_changed_namespace: bool
    #: How ``ctr events`` prints a Timestamp inside an event: ``"rfc3339"`` (1.6, encoding/json
    #: of gogo types) or ``"object"`` (1.7, ``{"seconds": N, "nanos": N}``).
    event_timestamp_form: str
    #: Whether a ttrpc ``Forward`` of an envelope without timestamp is refused with
    #: InvalidArgument "timestamp must be set" (1.6); 1.7 accepts it and stamps it 1970.
    refuses_unstamped_forward: bool
    #: Whether a restarted containerd deletes the tasks that exited while it was down. 1.7
    #: asks every shim it loads for its Pids, and one with none (an exited task, with pyshim
    #: and runc-v2 alike) that is not a sandbox is taken for a shim whose Create never
    #: happened (containerd#6860): "cleaning leaked shim process", Delete, Shutdown. 1.6
    #: keeps them STOPPED for the client to delete.
    deletes_tasks_exited_while_down: bool


BEHAVIOURS: dict[tuple[int, int], ContainerdBehaviour] = {
    (1, 6): ContainerdBehaviour(
        plugins_skipped_unconfigured=frozenset(),
        namespace_events_under_changed_namespace=False,
        event_timestamp_form="rfc3339",
        refuses_unstamped_forward=True,
        deletes_tasks_exited_while_down=False,
    ),
    (1, 7): ContainerdBehaviour(
        plugins_skipped_unconfigured=frozenset({"io.containerd.snapshotter.v1.blockfile"}),
        namespace_events_under_changed_namespace=True,
        event_timestamp_form="object",
        refuses_unstamped_forward=False,
        deletes_tasks_exited_while_down=True,
    ),
}

_VERSION = re.compile(r"\b(\d+)\.(\d+)\.(\d+)\S*")


def _first_version(text: str) -> str:
    match = _VERSION.search(text)
    if match is None:
        raise ValueError(f"no version number in {text!r}")
    return match[0]


@functools.cache
def containerd_version_string() -> str:
    """The version of the ``containerd`` on PATH, as it prints it (``1.7.24~ds1``)."""
    out = subprocess.run(
        ["containerd", "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    # "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1"
    return _first_version(out.split(maxsplit=2)[-1])


def containerd_version() -> tuple[int, int]:
    """(major, minor) of the ``containerd`` on PATH: the one the private daemon runs."""
    match = _VERSION.match(containerd_version_string())
    assert match is not None
    return int(match[1]), int(match[2])


def containerd_behaviour() -> ContainerdBehaviour:
    """The recorded behaviour of the running release; an unknown release is an error, so a
    new one is looked at (and added to :data:`BEHAVIOURS`) instead of half-passing."""
    version = containerd_version()
    if version not in BEHAVIOURS:
        raise LookupError(
            f"containerd {containerd_version_string()} is not a tested release "
            f"(tested: {', '.join(f'{a}.{b}' for a, b in SUPPORTED_RELEASES)})"
        )
    return BEHAVIOURS[version]


_RFC3339_UTC = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")


def event_timestamp_form(value: Any) -> str:
    """``"rfc3339"`` or ``"object"``: how ``ctr events`` printed this Timestamp."""
    if isinstance(value, str) and _RFC3339_UTC.match(value):
        return "rfc3339"
    if isinstance(value, dict) and set(value) <= {"seconds", "nanos"}:
        return "object"
    raise ValueError(f"not a Timestamp as ctr events prints one: {value!r}")


def parse_event_timestamp(value: Any) -> datetime:
    """A Timestamp inside a ``ctr events`` payload, in either release's form, as an aware
    UTC datetime (microseconds; the nanosecond remainder is dropped)."""
    if event_timestamp_form(value) == "rfc3339":
        match = _RFC3339_UTC.match(value)
        assert match is not None
        whole = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        nanos = int((match[2] or "0").ljust(9, "0"))
    else:
        # encoding/json omits zero fields of the protobuf message (seconds 0 means 1970).
        whole = datetime.fromtimestamp(int(value.get("seconds", 0)), UTC)
        nanos = int(value.get("nanos", 0))
    return whole + timedelta(microseconds=nanos // 1000)


def _os_release() -> str:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return "unknown OS"
    fields = dict(line.split("=", 1) for line in lines if "=" in line)
    try:
        debian_version = Path("/etc/debian_version").read_text().strip()
    except OSError:
        debian_version = ""
    name = fields.get("PRETTY_NAME", "unknown OS").strip('"')
    return f"{name} ({debian_version})" if debian_version else name


def _tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        return _first_version(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return "not found"


def platform_summary() -> str:
    """One line for the test report: which Debian, containerd, runc and Python this ran on."""
    return (
        f"platform: {_os_release()}, containerd {_tool_version(['containerd', '--version'])}, "
        f"runc {_tool_version(['runc', '--version'])}, Python {platform.python_version()}"
    )
