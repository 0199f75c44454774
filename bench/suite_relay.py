"""``bench.suite``'s stdout relay figure, with ``bench.stdout_relay``'s runs: attached
``ctr run --rm`` of ``/bin/true`` (baseline) and of ``dd`` writing SIZE MiB of zeros, ctr's
stdout on /dev/null (a file and a byte-for-byte check in the verification round)."""

from __future__ import annotations

from bench.stdout_relay import MIB, check_zeros, rate, timed_run
from bench.suite_ctr import Session
from bench.suite_env import Config


def relay_round(session: Session, config: Config, index: int, size_mib: int, *,
                verify: bool = False) -> dict[str, float]:
    """base_ms, bulk_s, bulk_raw_mbs (MB/s over the whole run) and bulk_net_mbs (MB/s over the
    run minus this round's baseline). Shims are gone when it returns."""
    containerd = session.containerd
    cid = session.new_id(config, f"relay{index}")
    command = ["/bin/dd", "if=/dev/zero", f"bs={MIB}", f"count={size_mib}"]
    out = containerd.base_dir / f"{cid}.stdout" if verify else None
    base_s = timed_run(containerd, config.runtime, session.rootfs, f"{cid}-true", ["/bin/true"],
                       stdout=None, timeout=120.0, started=session.ids)
    bulk_s = timed_run(containerd, config.runtime, session.rootfs, f"{cid}-bulk", command,
                       stdout=out, timeout=120.0 + size_mib, started=session.ids)
    if out is not None:
        check_zeros(out, size_mib * MIB, f"{config.name}: {' '.join(command)}")
        out.unlink()
    megabytes = size_mib * MIB / 1e6
    return {
        "base_ms": base_s * 1000,
        "bulk_s": bulk_s,
        "bulk_raw_mbs": rate(megabytes, bulk_s),
        "bulk_net_mbs": rate(megabytes, bulk_s - base_s),
    }
