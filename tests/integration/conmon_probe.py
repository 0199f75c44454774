"""A stand-in monitor for tests/integration/test_conmon_launch.py: pyshim-conmon's real parse,
validation and launch, then a monitor that reports what it finds on the sync channel as one
JSON message and exits 0.

Usage: python tests/integration/conmon_probe.py CONMON-ARGS...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyshim.conmon import args, launch, validate
from pyshim.conmon.daemon import Daemon, write_message
from pyshim.conmon.options import ConmonOptions


def report(daemon: Daemon) -> int:
    import prctl

    with open("/proc/self/oom_score_adj") as score:
        oom_score_adj = int(score.read())
    facts = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
        "subreaper": prctl.get_child_subreaper(),
        "oom_score_adj": oom_score_adj,
        "inherited": list(daemon.inherited_fds),
        "open": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "sync_cloexec": (daemon.channels.sync is not None
                         and not os.get_inheritable(daemon.channels.sync)),
        "start": daemon.channels.start,
        "attach": daemon.channels.attach,
        "ppid": os.getppid(),
        "links": {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in daemon.inherited_fds},
        "cgroup": Path("/proc/self/cgroup").read_text(),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
    }
    sync = daemon.channels.sync
    write_message(sync, json.dumps(facts).encode() + b"\n")
    if os.environ.get("PROBE_LINGER") and sync is not None:
        os.read(sync, 1)  # until the parent closes its end: a monitor that outlives things
    return 0


def main() -> int:
    values = args.parse([os.fsencode(word) for word in sys.argv[1:]], lambda: "UTF-8")
    inherited = launch.open_fds()
    config = validate.validate(ConmonOptions.from_values(values), validate.RealHost(),
                               os.environ)
    return launch.launch(config, os.environ, inherited, report)


if __name__ == "__main__":
    sys.exit(main())
