"""A ``ctr events`` subscriber that stamps every line with the moment it was read, for
``bench.suite``'s exit-detection latency.

The pipe is read raw (``os.read`` on its file descriptor, no Python buffering) by a thread that
takes ``time.perf_counter()`` as soon as a read returns; ``ctr`` (Go) writes each event line to
its unbuffered stdout as it receives the event.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.e2e.containerd import (
    EventLine,
    PrivateContainerd,
    parse_event_line,
    stop_reader_process,
)

SYNC_PREFIX = "pyshim-bench-sync-"


class TimedEvents:
    """``ctr events`` on this containerd; :meth:`wait` finds a line and when it arrived."""

    def __init__(self, containerd: PrivateContainerd) -> None:
        self._containerd = containerd
        self._stderr_path: Path = containerd.base_dir / "bench-ctr-events.stderr"
        self._lines: list[tuple[float, str]] = []
        self._eof = False
        self._condition = threading.Condition()
        with open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                ["ctr", "--address", str(containerd.address), "events"],  # all namespaces
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, bufsize=0,
            )
        self._reader = threading.Thread(target=self._read, name="bench-ctr-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        fd = stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            now = time.perf_counter()
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if complete:
                with self._condition:
                    self._lines.extend((now, line.decode(errors="replace")) for line in complete)
                    self._condition.notify_all()
        with self._condition:
            self._eof = True
            self._condition.notify_all()

    def mark(self) -> int:
        """An index: :meth:`wait` with it only looks at lines read after this call."""
        with self._condition:
            return len(self._lines)

    def wait(self, topic: str, match: dict[str, object], since: int = 0,
             timeout: float = 20.0) -> tuple[float, EventLine]:
        """The first line from index ``since`` on with this topic whose event has every
        key/value of ``match``: (perf_counter when it was read, the parsed line)."""
        deadline = time.monotonic() + timeout
        checked = since
        with self._condition:
            while True:
                for stamp, line in self._lines[checked:]:
                    try:
                        parsed = parse_event_line(line)
                    except ValueError:
                        continue
                    event = parsed.event if isinstance(parsed.event, dict) else {}
                    if parsed.topic == topic and all(event.get(key) == value
                                                     for key, value in match.items()):
                        return stamp, parsed
                checked = max(checked, len(self._lines))
                if self._eof:
                    raise RuntimeError(f"ctr events (pid {self._process.pid}) ended; stderr: "
                                       f"{self._stderr_tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {topic} event with {match} within {timeout} s")
                self._condition.wait(remaining)

    def sync(self, timeout: float = 20.0) -> None:
        """Return once the subscription is live: create and remove a throw-away namespace
        until ctr events shows its removal."""
        deadline = time.monotonic() + timeout
        while True:
            name = SYNC_PREFIX + secrets.token_hex(6)
            since = self.mark()
            self._containerd.ctr("namespaces", "create", name)
            self._containerd.ctr("namespaces", "remove", name)
            try:
                self.wait("/namespaces/delete", {"name": name}, since, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ctr events did not subscribe within {timeout} s; "
                                       f"stderr: {self._stderr_tail()}") from None

    def _stderr_tail(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-2000:]
        except OSError as error:
            return f"<{error}>"

    def close(self) -> None:
        """Stop ctr events (SIGTERM by PID, SIGKILL after 5 s), join the reader."""
        stop_reader_process(self._process, self._reader)

    def __enter__(self) -> TimedEvents:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
