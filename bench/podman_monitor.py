"""podman 4.3 with the real conmon and with pyshim-conmon, paired in one run: `podman run --rm`
latency, `podman exec` latency (medians of interleaved rounds) and the monitor's PSS per
container with N containers running (mean over the N monitors, from /proc/PID/smaps_rollup).

Uses the private podman of the e2e tests (tests/e2e/podman.py: private storage, the deployed
containers.conf with conmon_path set, commands below a child subreaper).

The suite's `conmon` phase (`python -m bench.suite --phases conmon`, bench/suite_conmon.py) runs
these figures with and without the server in one run, adds k8s-file throughput through podman
and reports them with issue 12's targets; this module is the quick standalone look.

Usage: python -m bench.podman_monitor [--runs N] [--containers N] [--no-server]
(--no-server: every pyshim monitor forked by its own launch, PYSHIM_CONMON_SERVER=0)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.e2e.podman import MONITOR_PATHS, PrivatePodman, TomlValue

MONITORS = ("conmon", "pyshim")


class ColdPodman(PrivatePodman):
    """podman whose monitors get PYSHIM_CONMON_SERVER=0: no warm monitor-server."""

    def containers_conf(self) -> dict[str, dict[str, TomlValue]]:
        tables = super().containers_conf()
        variables = tables["engine"]["conmon_env_vars"]
        assert isinstance(variables, list)
        tables["engine"]["conmon_env_vars"] = [
            *(item for item in variables if not str(item).startswith("PYSHIM_CONMON_SERVER=")),
            "PYSHIM_CONMON_SERVER=0"]
        return tables


def timed_ms(podman: PrivatePodman, *args: str) -> float:
    started = time.perf_counter()
    podman.run(*args, check=True)
    return (time.perf_counter() - started) * 1000


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise ValueError(f"no Pss line for pid {pid}")


def monitor_pid(podman: PrivatePodman, container: str) -> int:
    return int(podman.inspect(container)["State"]["ConmonPid"])


def measure(runs: int, containers: int, server: bool = True) -> dict[str, dict[str, float]]:
    kind = PrivatePodman if server else ColdPodman
    podmen = {name: kind(Path(tempfile.mkdtemp(prefix="pb-", dir="/tmp")), MONITOR_PATHS[name])
              for name in MONITORS}
    try:
        for podman in podmen.values():
            podman.start()
            podman.run("run", "--rm", *podman.container_args(), "/bin/true", check=True)  # warm
        run_times: dict[str, list[float]] = {name: [] for name in MONITORS}
        exec_times: dict[str, list[float]] = {name: [] for name in MONITORS}
        sleepers = {name: podman.detached("/bin/sleep", "600")
                    for name, podman in podmen.items()}
        for _ in range(runs):  # interleaved: machine load hits both alike
            for name, podman in podmen.items():
                run_times[name].append(
                    timed_ms(podman, "run", "--rm", *podman.container_args(), "/bin/true"))
                exec_times[name].append(timed_ms(podman, "exec", sleepers[name], "/bin/true"))
        pss: dict[str, float] = {}
        for name, podman in podmen.items():
            ids = [sleepers[name]] + [podman.detached("/bin/sleep", "600")
                                      for _ in range(containers - 1)]
            values = [pss_kib(monitor_pid(podman, container)) for container in ids]
            pss[name] = statistics.mean(values) / 1024
        return {name: {"run_ms": statistics.median(run_times[name]),
                       "exec_ms": statistics.median(exec_times[name]),
                       "monitor_pss_mib": pss[name]} for name in MONITORS}
    finally:
        for podman in podmen.values():
            podman.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--no-server", action="store_true")
    options = parser.parse_args()
    figures = measure(options.runs, options.containers, server=not options.no_server)
    ratios = {key: figures["pyshim"][key] / figures["conmon"][key]
              for key in ("run_ms", "exec_ms", "monitor_pss_mib")}
    print(json.dumps({**figures, "pyshim/conmon": ratios}, indent=2))


if __name__ == "__main__":
    main()
