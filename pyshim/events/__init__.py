"""Task events to containerd: `Events/Forward` on $TTRPC_ADDRESS, in order, never lost to a
full queue, never wedged by one bad event.

Events leave in the order they were published, per container (spec §4.4): one sender, one
queue, lanes keyed by container id. containerd unreachable (transport errors) → everything
waits and is retried with capped back-off for as long as the shim lives. containerd refusing
one event (an application error) → that event's container waits for its retries while other
containers' events overtake it; after a few refusals the event is dropped, except /tasks/exit
and /tasks/oom, which are retried for as long as the shim lives. Memory holds a bounded number
of envelopes; the overflow goes to an append-only spool file (given a directory) and is read
back in order. The sender is supervised (restarted if it crashes). publish() never raises into
the caller and never blocks it.

Modules: envelope (encoding, critical topics), spool (the overflow file), queue (memory bound,
ordering, refused lanes), publisher (public API, sender and retry).
"""

from __future__ import annotations

from pyshim.events.envelope import CRITICAL_TOPICS, container_of, envelope
from pyshim.events.publisher import (
    EVENTS_SERVICE,
    MAX_QUEUED,
    MAX_QUEUED_BYTES,
    REFUSALS_BEFORE_DROP,
    RETRY_FIRST,
    RETRY_MAX,
    SEND_TIMEOUT,
    Publisher,
)
from pyshim.events.spool import SPOOL_NAME, Spool, SpoolCorrupt

__all__ = [
    "CRITICAL_TOPICS",
    "EVENTS_SERVICE",
    "MAX_QUEUED",
    "MAX_QUEUED_BYTES",
    "REFUSALS_BEFORE_DROP",
    "RETRY_FIRST",
    "RETRY_MAX",
    "SEND_TIMEOUT",
    "SPOOL_NAME",
    "Publisher",
    "Spool",
    "SpoolCorrupt",
    "container_of",
    "envelope",
]
