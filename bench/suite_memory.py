"""``bench.suite``'s memory figures: N idle containers of one configuration, then the PSS and
RSS of their shim processes (for pyshim including the fork-server), per container."""

from __future__ import annotations

import sys
import time

from bench import suite_ksm
from bench.suite_ctr import Session
from bench.suite_env import BenchError, Config, Memory, memory_of, shim_pids


def measure(session: Session, config: Config, count: int, settle: float, *,
            ksm: bool = False, log: list[str] | None = None) -> Memory:
    """Start ``count`` sleepers of ``config``, find their shim processes, let them settle
    ``settle`` seconds (with ``ksm``: and until ksmd did at least 3 more full scans and merges
    no more, see :func:`bench.suite_ksm.wait_settled`; what it did is appended to ``log``),
    measure those processes, check they are still the shim processes, then delete the
    containers and wait until their shims are gone. Finding them calls each shim (see
    :func:`bench.suite_env.shim_pids`), so it comes before the shims settle: the figures are
    of shims left idle since."""
    tag = f"m{count}{'k' if ksm else ''}"
    step = f"memory N={count}{' with KSM' if ksm else ''}: {config.name}"
    ids = [session.new_id(config, tag) for _ in range(count)]
    try:
        session.start_many(config, ids, step)
        pids = shim_pids(session.containerd, config, ids)
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
        memory = memory_of(pids)
        if shim_pids(session.containerd, config, ids) != pids:
            raise BenchError(f"{step}: the shim processes changed while they settled")
        return memory
    finally:
        session.remove(ids, step)
