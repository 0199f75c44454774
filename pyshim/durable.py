"""fsync off the event loop: files already written (so no crash of ours can lose them) are made
durable against the host's crash by one worker thread, started at its first use.

An fsync blocks for a millisecond or more on a disk; on the loop it would delay what the write
was recorded for (an exit's event and Wait reply). Never raises into the caller: a failed
fsync is logged. `flush` waits (bounded) for what is pending, before the process exits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

log = logging.getLogger("pyshim.durable")

_executor: list[ThreadPoolExecutor] = []  # at most one, made at first use (after the fork)
_pending: set[Future[None]] = set()


def sync_later(sync: Callable[[str], None], path: str) -> None:
    """Run `sync(path)` (e.g. bundle.make_durable) on the worker thread, soon."""
    if not _executor:
        _executor.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyshim-fsync"))
    future = _executor[0].submit(_sync, sync, path)
    _pending.add(future)
    future.add_done_callback(_pending.discard)


def _sync(sync: Callable[[str], None], path: str) -> None:
    try:
        sync(path)
    except FileNotFoundError:
        pass  # removed meanwhile (the exec or the bundle was deleted): nothing to keep
    except OSError as error:
        log.error("cannot make %s durable: %s", path, error)


def flush(timeout: float = 5.0) -> bool:
    """Wait up to `timeout` seconds for the pending fsyncs; whether they all finished."""
    if not _pending:
        return True
    _, not_done = wait(list(_pending), timeout)
    return not not_done
