"""Host KSM (kernel same-page merging) for ``bench.suite``'s "with KSM" memory rows: turn it on
with a fast scan rate, wait until it has settled, and put back every sysfs value changed, also
on an exception or Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

KSM_DIR = Path("/sys/kernel/mm/ksm")
#: What the bench writes: ksmd on, and a scan rate that covers ~50 idle shims in well under a
#: second per full scan (the default, 100 pages per 20 ms, needs minutes).
SETTINGS = {"run": "1", "pages_to_scan": "5000"}


def read(name: str) -> str:
    return (KSM_DIR / name).read_text().strip()


def unavailable_reason() -> str | None:
    """Why the bench cannot drive KSM here, or None."""
    if not KSM_DIR.is_dir():
        return f"{KSM_DIR} is missing (kernel without CONFIG_KSM)"
    for name in (*SETTINGS, "full_scans"):
        if not (KSM_DIR / name).exists():
            return f"{KSM_DIR / name} is missing"
    for name in SETTINGS:
        if not os.access(KSM_DIR / name, os.W_OK):
            return f"{KSM_DIR / name} is not writable"
    return None


def state() -> dict[str, str]:
    """The values worth reporting (those present)."""
    names = ("run", "pages_to_scan", "sleep_millisecs", "full_scans", "pages_shared",
             "pages_sharing")
    return {name: read(name) for name in names if (KSM_DIR / name).exists()}


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """KSM on (:data:`SETTINGS`) inside the block; afterwards every value written is restored
    (SIGINT ignored meanwhile). A failed write is an OSError naming the file."""
    saved: dict[str, str] = {}
    try:
        for name, value in SETTINGS.items():
            current = read(name)
            if current == value:
                continue
            saved[name] = current
            _write(name, value)
        yield
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            # Reverse order: the scan rate back before ksmd's run state.
            errors = []
            for name, value in reversed(list(saved.items())):
                try:
                    _write(name, value)
                except OSError as error:
                    errors.append(str(error))
            if errors:
                raise OSError("restoring KSM settings failed: " + "; ".join(errors))
        finally:
            signal.signal(signal.SIGINT, previous)


def _write(name: str, value: str) -> None:
    try:
        (KSM_DIR / name).write_text(value)
    except OSError as error:
        raise OSError(f"writing {value!r} to {KSM_DIR / name}: {error}") from None


def full_scans() -> int:
    return int(read("full_scans"))


def wait_settled(since: int, scans: int = 3, tolerance: float = 0.01,
                 timeout: float = 180.0) -> int:
    """Wait until ksmd has finished at least ``scans`` more full scans than ``since`` and
    ``pages_sharing`` changed by at most ``tolerance`` (relative) over the last full scan;
    returns how many full scans it did. TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen_scan = full_scans()
    sharing_then: int | None = None
    while True:
        scan = full_scans()
        if scan != seen_scan:
            sharing = int(read("pages_sharing"))
            done = scan - since
            if (done >= scans and sharing_then is not None
                    and abs(sharing - sharing_then) <= tolerance * max(sharing, 1)):
                return done
            seen_scan, sharing_then = scan, sharing
        if time.monotonic() > deadline:
            raise TimeoutError(f"KSM did not settle within {timeout:.0f} s: {scan - since} "
                               f"full scans, pages_sharing {read('pages_sharing')}")
        time.sleep(0.05)
