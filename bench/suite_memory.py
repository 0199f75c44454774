"""``bench.suite``'s memory figures: N idle containers of one configuration, then the PSS and
RSS of their shim processes (for pyshim including the fork-server), per container."""

from __future__ import annotations

import sys
import time

from bench import suite_ksm
from bench.suite_ctr import Session
from bench.suite_env import BenchError, Config, Memory, shim_memory


def measure(session: Session, config: Config, count: int, settle: float, *,
            ksm: bool = False, log: list[str] | None = None) -> Memory:
    """Start ``count`` sleepers of ``config``, let them settle ``settle`` seconds (with
    ``ksm``: and until ksmd did at least 3 more full scans and merges no more, see
    :func:`bench.suite_ksm.wait_settled`; what it did is appended to ``log``), measure the
    shim processes, then delete the containers and wait until their shims are gone."""
    tag = f"m{count}{'k' if ksm else ''}"
    step = f"memory N={count}{' with KSM' if ksm else ''}: {config.name}"
    ids = [session.new_id(config, tag) for _ in range(count)]
    try:
        session.start_many(config, ids, step)
        scans_before = suite_ksm.full_scans() if ksm else 0
        started = time.monotonic()
        time.sleep(settle)
        if ksm:
            try:
                scans = suite_ksm.wait_settled(scans_before)
            except TimeoutError as error:
                raise BenchError(f"{step}: {error}") from None
            state = suite_ksm.state()
            message = (f"measured after {scans} full scans since the last start "
                       f"({time.monotonic() - started:.1f} s), pages_shared "
                       f"{state.get('pages_shared')}, pages_sharing {state.get('pages_sharing')}")
            print(f"  {step}: {message}", file=sys.stderr)
            if log is not None:
                log.append(f"{config.name}: {message}")
        return shim_memory(session.containerd, config, ids)
    finally:
        session.remove(ids, step)
