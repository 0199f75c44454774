"""The fork-server's rehearsal: one whole daemon life, in the fork-server itself, before it
freezes its objects and forks daemons.

Why: a forked daemon copies every page it writes, and the first run of any code writes far
more than later runs do (caches and lazily made objects filled in, 3.11's bytecode quickened
and specialised, attribute caches, uvloop's first-loop set-up). Run once here, that happens
in the fork-server, whose pages every daemon shares; the daemons then only write what each
run writes (docs/memory.md has the figures).

What runs is the real thing: `daemon._serve` on its own socket, driven over ttrpc as
containerd drives it (Connect, Create with stdout/stderr FIFOs, Start, State, an exec that
writes a line, Kill, Wait, Delete, Shutdown), events taken by an in-process Events service.
Only the OCI runtime is a stand-in (a sh script written here: runc's command line, a plain
`sleep` for the container), so no container, mount or cgroup is ever made. Everything lives
under a private directory removed afterwards; the fork-server's own state (stderr, signal
dispositions, subreaper flag, environment) is restored. A rehearsal that fails or overruns
its bound is logged and abandoned: daemons then merely cost more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
from typing import Any

import uvloop
from google.protobuf import any_pb2, empty_pb2

from pyshim import durable
from pyshim.events import EVENTS_SERVICE
from pyshim.ops import registry
from pyshim.protos.containerd.runc.v1 import options_pb2
from pyshim.protos.containerd.services.events.ttrpc.v1 import events_pb2 as forward_pb2
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.shim import daemon
from pyshim.shim.start import DaemonConfig
from pyshim.ttrpc import Client, Server
from pyshim.ttrpc.service import CallContext, Method, Service

log = logging.getLogger("pyshim.forkserver")

#: Environment: "0" skips the rehearsal (daemons then cost more; see docs/memory.md).
REHEARSAL_VARIABLE = "PYSHIM_FORKSERVER_REHEARSAL"
#: The whole rehearsal, and each call in it, at most (it takes ~25 ms).
TIMEOUT = 10.0
CALL_TIMEOUT = 2.0
NAMESPACE = "pyshim-rehearsal"
CONTAINER_ID = "rehearsal"
TASK_SERVICE = "containerd.task.v2.Task"

#: runc's command line, no container: create/exec start a process and write its pid file,
#: kill signals the one create started, delete forgets it.
STAND_IN_RUNTIME = r"""#!/bin/sh
root=/nonexistent
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=$2; shift 2 ;;
        --log|--log-format|--criu) shift 2 ;;
        --*) shift ;;
        *) break ;;
    esac
done
command=$1; shift
pid_file=
force=
while [ $# -gt 0 ]; do
    case "$1" in
        --pid-file) pid_file=$2; shift 2 ;;
        --bundle|--process|--console-socket|--preserve-fds|--format|--resources) shift 2 ;;
        --force) force=1; shift ;;
        --*) shift ;;
        *) break ;;
    esac
done
id=$1
mkdir -p "$root"
# Every process lives until it is killed: one that ended while this script still ran could
# be reaped by the shell instead of by its subreaper (the shim), which would never see it.
case "$command" in
    create)
        sleep 600 < /dev/null &
        echo $! > "$pid_file"; echo $! > "$root/$id.pid"; echo $! >> "$root/pids" ;;
    exec)
        { echo rehearsal; exec sleep 600; } < /dev/null &
        echo $! > "$pid_file"; echo $! >> "$root/pids" ;;
    start) ;;
    kill) kill -"$2" "$(cat "$root/$id.pid")" ;;
    delete)
        if [ -n "$force" ]; then kill -9 "$(cat "$root/$id.pid")" 2> /dev/null; fi
        rm -f "$root/$id.pid" ;;
    state) printf '{"id":"%s","pid":%s,"status":"running"}\n' "$id" "$(cat "$root/$id.pid")" ;;
    *) echo "rehearsal runtime: $command not supported" >&2; exit 1 ;;
esac
"""


def enabled() -> bool:
    return os.environ.get(REHEARSAL_VARIABLE, "1") != "0"


def rehearse(parent: str, runtime_script: str = STAND_IN_RUNTIME) -> bool:
    """Run one daemon life in this process, in a private directory under `parent`; whether
    it completed. Leaves this process as it found it: fds, signal dispositions, subreaper
    flag, environment, no child and no thread left (`runtime_script` is for tests)."""
    workdir = tempfile.mkdtemp(prefix="rehearsal-", dir=parent)
    open_fds = set(os.listdir("/proc/self/fd"))
    saved_stderr = os.dup(2)
    saved_environ = os.environ.get(registry.RUN_DIR_VARIABLE)
    saved_handlers = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    # A stop asked for meanwhile (SIGTERM, or a successor's handover) must reach the
    # fork-server, not the rehearsing daemon's handlers: held until the end.
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        # The daemon logs to fd 2, ours is the fork-server's log: its lines go nowhere.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        os.environ[registry.RUN_DIR_VARIABLE] = workdir
        bundle, runtime = _prepare(workdir, runtime_script)
        daemon.become_subreaper()  # the stand-in "container" re-parents to us, as to a daemon
        completed = uvloop.run(asyncio.wait_for(_rehearse(workdir, bundle, runtime), TIMEOUT))
    except Exception as error:  # an optimisation: never fatal
        os.dup2(saved_stderr, 2)
        log.warning("rehearsal failed (daemons will cost more memory): %r", error)
        completed = False
    finally:
        # The daemon's fsync worker thread: the fork-server must fork with no other thread.
        durable.stop()
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        daemon.set_subreaper(False)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for signum, handler in saved_handlers.items():
            with contextlib.suppress(TypeError, ValueError, OSError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if saved_environ is None:
            os.environ.pop(registry.RUN_DIR_VARIABLE, None)
        else:
            os.environ[registry.RUN_DIR_VARIABLE] = saved_environ
        _stop_leftovers(workdir)
        # A rehearsal cut short leaves what it had open (the daemon's clean-up never ran):
        # every fork would hand it on to a daemon.
        for name in set(os.listdir("/proc/self/fd")) - open_fds:
            with contextlib.suppress(OSError):
                os.close(int(name))
        shutil.rmtree(workdir, ignore_errors=True)
        # With the dispositions as found: a held SIGTERM acts now as it would have before.
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
    return completed


#: Signals that ask the fork-server to stop (SIGUSR2: a successor's handover).
_HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
#: What a daemon's start-up sets (or its loop does): restored after the rehearsal.
_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGPIPE)


def _prepare(workdir: str, runtime_script: str) -> tuple[str, str]:
    """The bundle (a config.json, no rootfs: nothing is mounted) and the stand-in runtime."""
    bundle = os.path.join(workdir, "bundle")
    os.mkdir(bundle)
    with open(os.path.join(bundle, "config.json"), "w", encoding="utf-8") as spec:
        json.dump({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                   "process": {"args": ["sleep", "600"], "cwd": "/", "env": []},
                   "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}, spec)
    runtime = os.path.join(workdir, "runtime")
    with open(runtime, "w", encoding="utf-8") as script:
        script.write(runtime_script)
    os.chmod(runtime, 0o700)
    return bundle, runtime


async def _rehearse(workdir: str, bundle: str, runtime: str) -> bool:
    events = _EventsSink()
    events_path = os.path.join(workdir, "events.sock")
    events_server = Server([events.service()])
    await events_server.start(_listen(events_path))

    fifos = [os.path.join(workdir, name) for name in ("stdout", "stderr")]
    readers = []
    for fifo in fifos:
        os.mkfifo(fifo, 0o600)
        readers.append(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    loop = asyncio.get_running_loop()
    for reader in readers:
        loop.add_reader(reader, _drain, reader)

    socket_path = os.path.join(workdir, "shim.sock")
    config = DaemonConfig(namespace=NAMESPACE, id=CONTAINER_ID, address="",
                          ttrpc_address=events_path, bundle=bundle, socket_path=socket_path)
    serving = asyncio.ensure_future(daemon._serve(config, _listen(socket_path)))
    try:
        await _drive(socket_path, bundle, runtime, os.path.join(workdir, "root"), fifos)
        await serving
    finally:
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(BaseException):
                await serving
        for reader in readers:
            loop.remove_reader(reader)
            os.close(reader)
        await events_server.close()
    return events.count > 0


async def _drive(socket_path: str, bundle: str, runtime: str, root: str,
                 fifos: list[str]) -> None:
    options = options_pb2.Options(binary_name=runtime, root=root)
    exec_spec = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
        value=json.dumps({"args": ["echo", "rehearsal"], "cwd": "/", "env": []}).encode())
    async with await Client.connect(socket_path, timeout=5) as client:
        async def call(method: str, request: Any, reply: Any) -> Any:
            return await client.call(TASK_SERVICE, method, request, reply, timeout=CALL_TIMEOUT)

        cid = CONTAINER_ID
        await call("Connect", shim_pb2.ConnectRequest(id=cid), shim_pb2.ConnectResponse)
        await call("Create", shim_pb2.CreateTaskRequest(
            id=cid, bundle=bundle, stdout=fifos[0], stderr=fifos[1],
            options=any_pb2.Any(type_url="containerd.runc.v1.Options",
                                value=options.SerializeToString())),
            shim_pb2.CreateTaskResponse)
        await call("Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)
        await call("State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
        for exec_id in ("exec-1", "exec-2"):
            await call("Exec", shim_pb2.ExecProcessRequest(
                id=cid, exec_id=exec_id, spec=exec_spec, stdout=fifos[0]), empty_pb2.Empty)
            await call("Start", shim_pb2.StartRequest(id=cid, exec_id=exec_id),
                       shim_pb2.StartResponse)
            await call("Kill", shim_pb2.KillRequest(id=cid, exec_id=exec_id,
                                                    signal=signal.SIGKILL), empty_pb2.Empty)
            await call("Wait", shim_pb2.WaitRequest(id=cid, exec_id=exec_id),
                       shim_pb2.WaitResponse)
            await call("Delete", shim_pb2.DeleteRequest(id=cid, exec_id=exec_id),
                       shim_pb2.DeleteResponse)
        await call("Kill", shim_pb2.KillRequest(id=cid, signal=signal.SIGKILL), empty_pb2.Empty)
        await call("Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
        await call("Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
        await call("Shutdown", shim_pb2.ShutdownRequest(id=cid), empty_pb2.Empty)


class _EventsSink:
    """containerd's Events/Forward, taking and dropping what the daemon publishes."""

    def __init__(self) -> None:
        self.count = 0

    def service(self) -> Service:
        method = Method("Forward", forward_pb2.ForwardRequest, empty_pb2.Empty, self.forward)
        return Service(EVENTS_SERVICE, {"Forward": method})

    async def forward(self, request: Any, context: CallContext) -> empty_pb2.Empty:
        self.count += 1
        return empty_pb2.Empty()


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(16)
    return listener


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.read(fd, 65536)


def _stop_leftovers(workdir: str) -> None:
    """A rehearsal cut short may leave its stand-in processes (sleeps) behind: stop them by
    the pids the stand-in runtime recorded, and reap them."""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(workdir, "root", NAMESPACE, "pids"), encoding="ascii") as pids:
            started = [int(line) for line in pids if line.strip()]
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
