"""fsync off the event loop: files already written (so no crash of ours can lose them) are made
durable against the host's crash by one worker thread, started at its first use.

An fsync blocks for a millisecond or more on a disk; on the loop it would delay what the write
was recorded for (an exit's event and Wait reply). Never raises into the caller: a failed
fsync is logged. `flush` waits (bounded) for what is pending, before the process exits.
"""

from __future__ import annotations

import _thread
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("pyshim.durable")

_Job = tuple[Callable[[str], None], str]
_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_state = threading.Condition()
_pending = [0]  # jobs queued or running
_worker: list[int] = []  # the worker's thread id, once started (after the fork)


def prepare() -> None:
    """Start the worker now, while the caller has time (its first Python code needs the GIL
    for a while: better not when an exit is being reported)."""
    with _state:
        if not _worker:
            # Not threading.Thread: its start() blocks until the new thread has run, a
            # scheduling round trip (milliseconds on a busy host).
            _worker.append(_thread.start_new_thread(_work, ()))


def sync_later(sync: Callable[[str], None], path: str) -> None:
    """Run `sync(path)` (e.g. bundle.make_durable) on the worker thread, soon."""
    prepare()
    with _state:
        _pending[0] += 1
    _jobs.put((sync, path))


def _work() -> None:
    while True:
        sync, path = _jobs.get()
        try:
            sync(path)
        except FileNotFoundError:
            pass  # removed meanwhile (the exec or the bundle was deleted): nothing to keep
        except OSError as error:
            log.error("cannot make %s durable: %s", path, error)
        except BaseException:
            log.exception("making %s durable failed", path)
        with _state:
            _pending[0] -= 1
            _state.notify_all()


def worker_thread() -> int | None:
    """The worker's thread id (None before the first job)."""
    return _worker[0] if _worker else None


def flush(timeout: float = 5.0) -> bool:
    """Wait up to `timeout` seconds for the pending fsyncs; whether they all finished."""
    with _state:
        return _state.wait_for(lambda: _pending[0] == 0, timeout)
