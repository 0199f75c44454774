"""`pyshim ps`, `inspect`, `debug` and `forkserver`: the operator commands' argument parsing
and output. What they show comes from pyshim.ops.snapshot."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

from pyshim.ops import forkservers, query, render, snapshot
from pyshim.ops.snapshot import ContainerView, Snapshot

RUN_DIR_HELP = ("shims register under $PYSHIM_RUN_DIR/shims and fork-servers live in "
                "$PYSHIM_RUN_DIR/forkserver (default /run/pyshim)")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="only shims of the containerd at this gRPC address")
    parser.add_argument("-n", "--namespace", help="only shims of this containerd namespace")


def ps_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pyshim ps", epilog=RUN_DIR_HELP,
        description="List every pyshim shim on this host, its containers and their processes "
                    "(pids, states, exit records), and the fork-servers. Live shims are asked "
                    "over their sockets; for a dead shim, the exit records it left are shown.")
    _filters(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    taken = snapshot.take(args.address, args.namespace)
    if args.json:
        print(json.dumps(taken.to_json(), indent=2))
    else:
        print(render.ps(taken))
    return 0


def _find(taken: Snapshot, container_id: str) -> list[tuple[snapshot.ShimView, ContainerView]]:
    return [(shim, container) for shim in taken.shims for container in shim.containers
            if container.id == container_id]


def _one(argv: list[str], prog: str, description: str, extra: bool = False
         ) -> tuple[argparse.Namespace, snapshot.ShimView, ContainerView] | int:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=RUN_DIR_HELP)
    parser.add_argument("id", help="container id")
    _filters(parser)
    if extra:
        parser.add_argument("--signal", action="store_true",
                            help="only send SIGUSR1 to the shim (the dump goes to its log)")
    else:
        parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    found = _find(snapshot.take(args.address, args.namespace), args.id)
    if not found:
        print(f"{prog}: no container {args.id!r} in any pyshim shim", file=sys.stderr)
        return 1
    if len(found) > 1:
        where = ", ".join(f"{c.namespace} at {c.address}" for _, c in found)
        print(f"{prog}: {args.id!r} is in several places ({where}): give --namespace or "
              "--address", file=sys.stderr)
        return 1
    shim, container = found[0]
    return args, shim, container


def inspect_main(argv: list[str]) -> int:
    chosen = _one(argv, "pyshim inspect", "Show one container in full: its shim, bundle, "
                  "processes, stdio and exit records.")
    if isinstance(chosen, int):
        return chosen
    args, shim, container = chosen
    if args.json:
        from dataclasses import asdict

        shim_fields = {key: value for key, value in asdict(shim).items() if key != "containers"}
        print(json.dumps({**asdict(container), "shim": shim_fields}, indent=2))
    else:
        print(render.inspect(container, shim.socket, shim.started_at))
    return 0


def debug_main(argv: list[str]) -> int:
    chosen = _one(argv, "pyshim debug", "Make the shim of a container write every asyncio "
                  "task's stack (and what it waits for) and every thread's stack into its log "
                  "(containerd's log, through the bundle's log FIFO), without stopping it; "
                  "the dump is printed here too. A shim that does not answer gets SIGUSR1: "
                  "its thread stacks still reach the log.", extra=True)
    if isinstance(chosen, int):
        return chosen
    args, shim, _container = chosen
    if shim.state == snapshot.GONE:
        print(f"pyshim debug: the shim (pid {shim.pid}) is gone", file=sys.stderr)
        return 1
    if shim.state == snapshot.NOT_ANSWERING:
        print(f"pyshim debug: shim {shim.pid} does not answer ({shim.error}): sending SIGUSR1",
              file=sys.stderr)
    elif not args.signal:
        try:
            print(asyncio.run(query.debug(shim.socket)), end="")
            return 0
        except query.ShimUnreachable as error:
            print(f"pyshim debug: shim {shim.pid} does not answer ({error}): sending SIGUSR1",
                  file=sys.stderr)
    os.kill(shim.pid, signal.SIGUSR1)
    print(f"sent SIGUSR1 to shim {shim.pid}: the dump is in its log ({shim.bundle}/log, "
          "copied into containerd's log)")
    return 0


def forkserver_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pyshim forkserver", epilog=RUN_DIR_HELP,
        description="The warm fork-servers (one per containerd address). status: list them; "
                    "stop: stop them (running shims are not affected; the next container "
                    "start launches a new one).")
    parser.add_argument("action", choices=("status", "stop"))
    parser.add_argument("--address", help="only the fork-server of this containerd address")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    args = parser.parse_args(argv)
    servers = [server for server in forkservers.list_servers()
               if args.address is None or server.address == args.address]
    if args.action == "status":
        if args.json:
            from dataclasses import asdict

            print(json.dumps([asdict(server) for server in servers], indent=2))
        elif servers:
            print(render.table(
                ["PID", "STATE", "CONTAINERD", "CODE", "SOCKET"],
                [[str(s.pid or "-"), s.state, s.address or "?", s.stamp or "?", s.socket]
                 for s in servers]))
        else:
            print("no fork-servers")
        return 0
    code = 0
    for server in servers:
        if server.state != "serving":
            continue
        if forkservers.stop(server):
            print(f"stopped fork-server {server.pid} ({server.address})")
        else:
            print(f"fork-server {server.pid} did not stop within {forkservers.STOP_WAIT:g} s",
                  file=sys.stderr)
            code = 1
    return code
