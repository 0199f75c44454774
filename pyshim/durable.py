"""fsync off the event loop: files already written (so no crash of ours can lose them) are made
durable against the host's crash by one worker thread, started at its first use.

An fsync blocks for a millisecond or more on a disk; on the loop it would delay what the write
was recorded for (an exit's event and Wait reply). Never raises into the caller: a failed
fsync is logged. `flush` waits (bounded) for what is pending, before the process exits.
"""

from __future__ import annotations

import _thread
import logging
import os
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("pyshim.durable")

_Job = tuple[Callable[[str], None], str] | None  # None: the worker ends


class _Worker:
    """One process's worker: its queue, its count of pending jobs, its thread. A forked child
    inherits the object but not the thread, so every use checks the owner's pid."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.state = threading.Condition()
        self.pending = 0  # jobs queued or running
        self.thread: int | None = None
        self.ended = threading.Event()


_current = [_Worker()]


def _worker() -> _Worker:
    worker = _current[0]
    if worker.pid != os.getpid():  # forked: the thread (and its queue's waiters) stayed behind
        worker = _current[0] = _Worker()
    return worker


def prepare() -> None:
    """Start the worker now, while the caller has time (its first Python code needs the GIL
    for a while: better not when an exit is being reported)."""
    worker = _worker()
    with worker.state:
        if worker.thread is None:
            # Not threading.Thread: its start() blocks until the new thread has run, a
            # scheduling round trip (milliseconds on a busy host).
            worker.thread = _thread.start_new_thread(_work, (worker,))


def sync_later(sync: Callable[[str], None], path: str) -> None:
    """Run `sync(path)` (e.g. bundle.make_durable) on the worker thread, soon."""
    prepare()
    worker = _worker()
    with worker.state:
        worker.pending += 1
    worker.jobs.put((sync, path))


def _work(worker: _Worker) -> None:
    while True:
        job = worker.jobs.get()
        if job is None:
            worker.ended.set()
            return
        sync, path = job
        try:
            sync(path)
        except FileNotFoundError:
            pass  # removed meanwhile (the exec or the bundle was deleted): nothing to keep
        except OSError as error:
            log.error("cannot make %s durable: %s", path, error)
        except BaseException:
            log.exception("making %s durable failed", path)
        with worker.state:
            worker.pending -= 1
            worker.state.notify_all()


def worker_thread() -> int | None:
    """This process's worker thread id (None before the first job)."""
    return _worker().thread


def flush(timeout: float = 5.0) -> bool:
    """Wait up to `timeout` seconds for the pending fsyncs; whether they all finished."""
    worker = _worker()
    with worker.state:
        return worker.state.wait_for(lambda: worker.pending == 0, timeout)


def stop(timeout: float = 5.0) -> bool:
    """Flush, then end the worker thread (a process about to fork children that must not
    inherit a thread's locks: the fork-server after its rehearsal); whether it ended."""
    worker = _worker()
    flushed = flush(timeout)
    with worker.state:
        running = worker.thread is not None
        worker.thread = None
    if not running:
        return flushed
    worker.jobs.put(None)
    ended = worker.ended.wait(timeout)
    _current[0] = _Worker()
    return flushed and ended
