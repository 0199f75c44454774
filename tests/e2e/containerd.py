"""A private containerd for end-to-end tests.

:class:`PrivateContainerd` runs the Debian ``containerd`` binary with a configuration of its own:
every path it owns (root, state, sockets, config, log) lives under one base directory, so it never
touches a system containerd. It runs under ``subreaper.py`` (next to this file), which is a child
subreaper: shims that daemonize are re-parented to it and reaped, because PID 1 on the test
machines does not reap orphans.

Some things of containerd 1.6 and 1.7 live outside the base directory whatever its configuration
says:

* shim sockets, always in ``/run/containerd/s`` (the name is a SHA-256 of
  ``<grpc address>/<ns>/<id>``, so our names never collide with another containerd's);
* runc's state of containers started by ``containerd-shim-runc-v2``, in
  ``/run/containerd/runc/<ns>/<id>``, and the cgroups runc creates for them (``/<ns>/<id>`` in
  every hierarchy with ``ctr``; the ``/<ns>`` parents are left behind even by a clean delete);
* the stdio FIFOs ``ctr`` creates for a task, in ``/run/containerd/fifo/<random>/`` unless
  given ``--fifo-dir``: :meth:`PrivateContainerd.ctr` (and ``ctr_argv``) pass
  ``--fifo-dir <base_dir>/fifo`` to ``run``, ``task start`` and ``task exec``, so that those of
  ``ctr run -d`` (which ctr never removes) go with the base directory.

:meth:`PrivateContainerd.stop` kills every process of the tree, cleans up those (only what this
containerd made, see there), unmounts everything below the base directory and removes it.

Typical use::

    base = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    with PrivateContainerd(base) as containerd:
        print(containerd.ctr("version").stdout)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from pyshim.ops import registry
from pyshim.shim import forkclient

#: The subreaper wrapper started in front of containerd.
SUBREAPER = Path(__file__).with_name("subreaper.py")

#: Where containerd 1.6 shims (runc-v2 and pyshim alike) put their sockets, whatever the
#: daemon's ``state`` directory is.
SHIM_SOCKET_DIR = Path("/run/containerd/s")

#: runc's state directory as used by ``containerd-shim-runc-v2`` by default (``--root``).
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")

#: Where ``ctr run``/``ctr tasks start`` create the FIFOs of a task's stdio (one random
#: sub-directory per task; ctr removes it when it deletes the task).
CTR_FIFO_DIR = Path("/run/containerd/fifo")

#: Plugins that are slow to load, need things this machine lacks, or are irrelevant to a shim.
#: ``io.containerd.grpc.v1.cri`` is here; a test that needs CRI passes its own list.
DEFAULT_DISABLED_PLUGINS: tuple[str, ...] = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
)

#: Longest path that fits in ``sockaddr_un.sun_path`` (108 bytes including the final NUL).
MAX_SOCKET_PATH = 107

#: Names of the throw-away namespaces used to synchronise an event subscription.
_SYNC_PREFIX = "pyshim-e2e-sync-"

_LOG_TAIL_LINES = 40


class ContainerdError(RuntimeError):
    """The private containerd could not be started, used or cleaned up."""


class CtrError(ContainerdError):
    """A ``ctr`` command failed (non-zero exit status) or timed out."""

    def __init__(
        self, argv: list[str], returncode: int | None, stdout: str, stderr: str, reason: str
    ) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(argv)}: {reason}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON string syntax is a subset of it for what ``json`` emits)."""
    return json.dumps(value)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def _unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space, ...) of /proc/self/mountinfo fields."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest (then most recently mounted) first."""
    prefix = str(directory).rstrip("/") + "/"
    found: list[tuple[int, int, str]] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_point = _unescape_mountinfo(fields[4])
            if mount_point == prefix[:-1] or mount_point.startswith(prefix):
                found.append((mount_point.count("/"), int(fields[0]), mount_point))
    found.sort(reverse=True)
    return [mount_point for _, _, mount_point in found]


def delete_runc_containers(state_files: Iterable[Path], base_dir: Path,
                           errors: list[str]) -> None:
    """``runc delete --force`` each container of ``state_files`` (``<root>/<id>/state.json``)
    whose bundle lies below ``base_dir``, then remove its state directory.

    runc records the bundle as a ``bundle=<path>`` label in ``state.json``; one below
    ``base_dir`` belongs to the harness that owns ``base_dir``, any other stays.
    """
    prefix = "bundle=" + str(base_dir) + "/"
    for state_file in state_files:
        try:
            labels = json.loads(state_file.read_text())["config"].get("labels") or []
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if not any(isinstance(label, str) and label.startswith(prefix) for label in labels):
            continue
        container = state_file.parent
        argv = ["runc", "--root", str(container.parent), "delete", "--force", container.name]
        try:
            subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True)
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(f"{' '.join(argv)}: {error!r}")
        if container.exists():
            shutil.rmtree(container, ignore_errors=True)


def unmount_all_below(directory: Path, errors: list[str]) -> None:
    """Unmount every mount point at or below ``directory`` (also stacked mounts), deepest
    first, ``umount -l`` as a fallback."""
    for _ in range(10):
        try:
            mount_points = mounts_under(directory)
        except OSError as error:
            errors.append(f"reading /proc/self/mountinfo: {error!r}")
            return
        if not mount_points:
            return
        for mount_point in mount_points:
            result = subprocess.run(
                ["umount", mount_point], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                subprocess.run(["umount", "-l", mount_point], capture_output=True, check=False)
    errors.append(f"still mounted below {directory}: {mounts_under(directory)}")


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 file system, from /proc/self/mountinfo."""
    roots: list[Path] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mount_fields, _, fs_fields = line.partition(" - ")
            if fs_fields.split()[:1] in (["cgroup"], ["cgroup2"]):
                roots.append(Path(_unescape_mountinfo(mount_fields.split()[4])))
    return roots


def _subdirectories(directory: Path) -> set[str]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return set()
    return {entry.name for entry in entries if entry.is_dir(follow_symlinks=False)}


def bound_unix_socket_paths() -> set[str]:
    """Filesystem paths of every bound unix socket in this network namespace (/proc/net/unix)."""
    paths: set[str] = set()
    with open("/proc/net/unix") as table:
        next(table)  # header
        for line in table:
            fields = line.rstrip("\n").split(maxsplit=7)
            if len(fields) == 8 and fields[7].startswith("/"):
                paths.add(fields[7])
    return paths


@dataclass(frozen=True)
class EventLine:
    """One parsed line of ``ctr events`` output (see :class:`EventSubscription`)."""

    timestamp: str
    namespace: str
    topic: str
    event: dict[str, Any] | None


_EVENT_LINE = re.compile(
    r"^(?P<timestamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [+-]\d{4} \S+) "
    r"(?P<namespace>\S+) (?P<topic>/\S*) ?(?P<event>.*)$"
)


def parse_event_line(line: str) -> EventLine:
    """Split a ``ctr events`` line into its parts; the event JSON is decoded (None if empty)."""
    match = _EVENT_LINE.match(line.rstrip("\n"))
    if match is None:
        raise ValueError(f"not a ctr events line: {line!r}")
    payload = match["event"].strip()
    event = json.loads(payload) if payload else None
    return EventLine(match["timestamp"], match["namespace"], match["topic"], event)


def _is_sync_line(line: str) -> str | None:
    """The sync namespace name if ``line`` is one of our own synchronisation events."""
    try:
        parsed = parse_event_line(line)
    except ValueError:
        return None
    if not parsed.topic.startswith("/namespaces/") or not isinstance(parsed.event, dict):
        return None
    name = parsed.event.get("name")
    return name if isinstance(name, str) and name.startswith(_SYNC_PREFIX) else None


class EventSubscription:
    """A running ``ctr --address <sock> events`` whose output lines are collected on a thread.

    Output format of ``ctr events`` (containerd 1.6.20, observed): one line per event,

        ``<timestamp> <namespace> <topic> <event JSON>``

    for example (the last one, a ``TaskExit`` forwarded over ttrpc, is wrapped here)::

        2026-11-22 20:15:38.073401455 +0000 UTC default /namespaces/create {"name":"foo"}
        2026-11-22 20:15:38.091530459 +0000 UTC foo /snapshot/prepare {"key":"snap1"}
        2026-11-22 20:25:24.686606 +0000 UTC default /tasks/exit {"container_id":"c1","id":"c1",
            "pid":42,"exit_status":3,"exited_at":"2023-11-14T22:13:20.12Z"}

    * ``<timestamp>`` is the envelope timestamp printed with Go's ``time.Time.String()``: four
      space-separated words, ``YYYY-MM-DD HH:MM:SS.fffffffff +0000 UTC``, trailing zeros of the
      fraction dropped (the fraction vanishes entirely on a whole second).
    * ``<namespace>`` and ``<topic>`` are the envelope's fields verbatim.
    * ``<event JSON>`` is the event decoded from its ``Any`` (looked up by type URL among the
      types ctr knows) and re-encoded with Go's ``encoding/json``: the Go field names (snake
      case), zero values omitted, timestamps in RFC 3339 with trailing zeros dropped (1.6; 1.7
      prints them as ``{"seconds": N, "nanos": N}``: read them with
      ``containerd_versions.parse_event_timestamp``).
    * An event whose type URL ctr cannot decode is *not printed at all*: ctr logs
      ``level=warning msg="cannot unmarshal an event from Any" error="type with url <url>: not
      found"`` on its stderr (kept in :attr:`stderr_path`) and skips it. That includes
      ``type.googleapis.com/containerd.events.TaskExit``: only the bare
      ``containerd.events.TaskExit`` form is decoded (observed).
    * (Observed) a ttrpc ``Forward`` of an envelope *without* ``event`` crashes containerd
      1.6.20 (nil dereference in ``exchange.Forward``), so there are no event-less lines.

    Use :meth:`PrivateContainerd.subscribe_events` to create one: it only returns once the
    subscription is live (it waits for a synchronisation event of its own; those events, in
    namespaces named ``pyshim-e2e-sync-*``, are not recorded in :meth:`lines`).
    """

    def __init__(self, argv: list[str], stderr_path: Path) -> None:
        self.argv = argv
        self.stderr_path = stderr_path
        self._lines: list[str] = []
        self._sync_seen: set[str] = set()
        self._eof = False
        self._condition = threading.Condition()
        self._stderr: IO[bytes] = open(stderr_path, "wb")  # noqa: SIM115 (closed in close())
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._read, name=f"ctr-events-{self._process.pid}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """PID of the ``ctr events`` process."""
        return self._process.pid

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for raw in stdout:
            line = raw.rstrip("\n")
            sync_name = _is_sync_line(line)
            with self._condition:
                if sync_name is not None:
                    self._sync_seen.add(sync_name)
                else:
                    self._lines.append(line)
                self._condition.notify_all()
        with self._condition:
            self._eof = True
            self._condition.notify_all()

    def lines(self) -> list[str]:
        """Every event line received so far (without synchronisation events), oldest first."""
        with self._condition:
            return list(self._lines)

    def _saw_sync(self, name: str, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(
                lambda: name in self._sync_seen or self._eof, timeout
            ) and (name in self._sync_seen)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The first line received since the subscription started for which ``predicate`` holds.

        Looks at lines already received as well as new ones; waits at most ``timeout`` seconds.
        Raises :class:`TimeoutError` (listing the lines seen) on timeout, and
        :class:`ContainerdError` if ``ctr events`` exits before a line matches.
        """
        deadline = time.monotonic() + timeout
        checked = 0
        with self._condition:
            while True:
                for line in self._lines[checked:]:
                    if predicate(line):
                        return line
                checked = len(self._lines)
                if self._eof:
                    raise ContainerdError(
                        f"ctr events (pid {self.pid}) ended before a matching line; "
                        f"lines: {self._lines!r}; stderr:\n{_tail(self.stderr_path)}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"no matching ctr events line within {timeout} s; lines: {self._lines!r}"
                    )
                self._condition.wait(remaining)

    def wait_for_topic(self, topic: str, timeout: float = 10.0) -> EventLine:
        """The first event with exactly this topic (e.g. ``/tasks/exit``), parsed."""
        line = self.wait_for(lambda text: _topic_of(text) == topic, timeout)
        return parse_event_line(line)

    def close(self) -> None:
        """Stop ``ctr events`` (SIGTERM by PID, SIGKILL after 5 s) and the reader. Idempotent."""
        stop_reader_process(self._process, self._reader)
        self._stderr.close()

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _topic_of(line: str) -> str | None:
    try:
        return parse_event_line(line).topic
    except ValueError:
        return None


def make_busybox_rootfs(directory: Path, busybox: str = "/bin/busybox") -> Path:
    """Make ``directory`` a minimal rootfs: a static busybox and a symlink per applet in /bin.

    ``busybox`` must be statically linked (Debian's ``busybox-static`` installs /bin/busybox).
    Use it with ``ctr run --rootfs <directory> ...``. Returns ``directory``.
    """
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (bin_dir / applet).symlink_to("busybox")
    return directory


#: ctr subcommands that create stdio FIFOs (and so take ``--fifo-dir``), with their aliases.
FIFO_SUBCOMMANDS = frozenset({("run",), *((task, verb) for task in ("task", "tasks", "t")
                                          for verb in ("start", "exec"))})


def with_fifo_dir(args: Sequence[str], fifo_dir: Path) -> list[str]:
    """ctr ``args`` with ``--fifo-dir fifo_dir`` after the subcommand if it makes FIFOs."""
    words = list(args)
    for length in (1, 2):
        if tuple(words[:length]) in FIFO_SUBCOMMANDS:
            return [*words[:length], "--fifo-dir", str(fifo_dir), *words[length:]]
    return words


def fifo_dirs_open_by(
    processes: Iterable[psutil.Process], root: Path = CTR_FIFO_DIR
) -> set[Path]:
    """Directories below ``root`` (ctr's default :data:`CTR_FIFO_DIR`) holding FIFOs that these
    processes have open.

    A shim keeps its task's stdio FIFOs open, so this finds the FIFO directories of tasks that
    a test left behind (ctr removes them itself when the task is deleted normally).
    """
    prefix = str(root) + "/"
    found: set[Path] = set()
    for process in processes:
        fd_dir = f"/proc/{process.pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                found.add(root / target[len(prefix) :].split("/", 1)[0])
    return found


def stop_reader_process(process: subprocess.Popen[Any], reader: threading.Thread) -> None:
    """Stop a process whose stdout a thread reads: SIGTERM by PID, SIGKILL after 5 s; then
    join the reader and close the pipe. Idempotent."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    reader.join(5)
    if process.stdout is not None:
        process.stdout.close()


def _kill_quietly(process: psutil.Process) -> None:
    """SIGKILL ``process`` by PID; psutil refuses if the PID now names another process."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        process.kill()


def kill_subreaper_tree(subreaper: subprocess.Popen[bytes], errors: list[str],
                        timeout: float = 10.0) -> None:
    """SIGKILL, by PID, whatever is (or gets re-parented) below ``subreaper`` until it exits
    (it does once it has no child left); after ``timeout`` it is killed itself."""
    deadline = time.monotonic() + timeout
    while subreaper.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(subreaper.pid).children(recursive=True):
                _kill_quietly(process)
        if time.monotonic() > deadline:
            errors.append(f"subreaper {subreaper.pid} did not exit; killing it")
            subreaper.kill()
            subreaper.wait()
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            subreaper.wait(0.05)


class PrivateContainerd:
    """A containerd daemon of our own, with all its files under ``base_dir``.

    Paths (all absolute):

    * ``root``: ``base_dir/root``; ``state``: ``base_dir/state``;
    * ``address`` (gRPC): ``base_dir/containerd.sock``; ``ttrpc_address``: ``address + ".ttrpc"``
      (containerd's default naming, and what shims get in ``TTRPC_ADDRESS``);
    * ``fifo_dir``: ``base_dir/fifo``, the ``--fifo-dir`` of :meth:`ctr`'s FIFO-making commands;
    * ``config_path``: ``base_dir/config.toml``; ``log_path``: ``base_dir/containerd.log``
      (containerd's stdout and stderr, and the subreaper's messages);
    * the ``opt`` plugin's directory ``base_dir/opt`` (its default is ``/opt/containerd``).

    ``extra_config`` is appended verbatim to the generated ``config.toml`` (version 2). It comes
    after the ``[grpc]``/``[ttrpc]``/``[plugins."io.containerd.internal.v1.opt"]`` tables, so it
    must start with a table header of its own (e.g.
    ``[plugins."io.containerd.runtime.v2.task"]``) and must not repeat those tables.
    ``disabled_plugins`` replaces :data:`DEFAULT_DISABLED_PLUGINS` (e.g. to enable CRI), ``env``
    adds to or overrides the environment containerd (and so every shim) gets, and
    ``runc_roots`` lists the runc state directories :meth:`stop` cleans up.

    ``base_dir`` must be short: the ttrpc socket path has to fit in 107 bytes. It is removed by
    :meth:`stop`. Call :meth:`stop` (or use the object as a context manager) even if
    :meth:`start` failed.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        extra_config: str = "",
        disabled_plugins: Iterable[str] = DEFAULT_DISABLED_PLUGINS,
        env: Mapping[str, str] | None = None,
        runc_roots: Iterable[Path] = (DEFAULT_RUNC_ROOT,),
    ) -> None:
        self.base_dir = Path(os.path.realpath(base_dir))
        self.root = self.base_dir / "root"
        self.state = self.base_dir / "state"
        self.opt = self.base_dir / "opt"
        self.address = self.base_dir / "containerd.sock"
        self.ttrpc_address = self.base_dir / "containerd.sock.ttrpc"
        self.config_path = self.base_dir / "config.toml"
        self.log_path = self.base_dir / "containerd.log"
        self.fifo_dir = self.base_dir / "fifo"
        self.extra_config = extra_config
        self.disabled_plugins = tuple(disabled_plugins)
        self.env = dict(env or {})
        self.runc_roots = tuple(runc_roots)
        if len(os.fsencode(self.ttrpc_address)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"base_dir {self.base_dir} is too long: {self.ttrpc_address} does not fit in "
                f"sun_path ({MAX_SOCKET_PATH} bytes)"
            )
        # One subreaper per start(): after stop_daemon() + start() the shims of the first
        # daemon stay children of the first subreaper.
        self._subreapers: list[subprocess.Popen[bytes]] = []
        self._daemon: psutil.Process | None = None
        self._subscriptions: list[EventSubscription] = []
        self._sockets_before: set[str] | None = None
        #: Where shims started before hold_shim_events() dial (then a symlink).
        self._shims_ttrpc_address: Path | None = None
        # Sub-directories of the cgroup hierarchies and runc roots before the first start.
        self._dirs_before: dict[Path, set[str]] | None = None
        self._stopped = False

    def shim_socket_path(self, namespace: str, group_id: str) -> Path:
        """Where a 1.6 shim of this containerd listens for ``<namespace>/<group_id>``.

        runc-v2's convention: ``/run/containerd/s/<sha256 hex of "<grpc address>/<ns>/<id>">``
        (``<id>`` is the grouping id: the container id unless a group annotation is set).
        """
        key = f"{self.address}/{namespace}/{group_id}"
        return SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()

    # ----------------------------------------------------------------------------- config

    def config_text(self) -> str:
        """The ``config.toml`` that :meth:`start` writes."""
        disabled = ", ".join(_toml_string(name) for name in self.disabled_plugins)
        text = (
            "version = 2\n"
            f"root = {_toml_string(str(self.root))}\n"
            f"state = {_toml_string(str(self.state))}\n"
            f"disabled_plugins = [{disabled}]\n"
            "\n[grpc]\n"
            f"  address = {_toml_string(str(self.address))}\n"
            "\n[ttrpc]\n"
            f"  address = {_toml_string(str(self.ttrpc_address))}\n"
            '\n[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {_toml_string(str(self.opt))}\n"
        )
        if self.extra_config:
            text += "\n" + self.extra_config.rstrip("\n") + "\n"
        return text

    # ------------------------------------------------------------------------- properties

    @property
    def pid(self) -> int:
        """PID of the running containerd daemon."""
        if self._daemon is None:
            raise ContainerdError("containerd is not running")
        return self._daemon.pid

    @property
    def subreaper_pid(self) -> int:
        """PID of the subreaper in front of the most recently started containerd."""
        if not self._subreapers:
            raise ContainerdError("containerd was never started")
        return self._subreapers[-1].pid

    @property
    def running(self) -> bool:
        """Whether the daemon started last is still alive."""
        if self._daemon is None:
            return False
        try:
            return self._daemon.is_running() and self._daemon.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    # ------------------------------------------------------------------------ start/stop

    def start(self, timeout: float = 20.0) -> None:
        """Start containerd (under the subreaper) and wait until ``ctr version`` answers.

        May be called again after :meth:`stop_daemon` to restart the daemon on the same state
        (shims of the previous daemon keep running). Raises :class:`ContainerdError` with the
        tail of containerd's log if it exits or does not answer within ``timeout`` seconds.

        The subreaper watches this process (``--parent``): if it dies without calling
        :meth:`stop` (pytest killed), the subreaper SIGTERMs containerd and SIGKILLs the rest
        of the tree 10 s later. Files, mounts and sockets stay behind in that case, and the
        subreaper itself ends as a zombie of PID 1.
        """
        if self._stopped:
            raise ContainerdError("this PrivateContainerd was stopped; make a new one")
        if self._daemon is not None:
            raise ContainerdError(f"containerd is already running (pid {self._daemon.pid})")
        if self._sockets_before is None:
            self._sockets_before = self._shim_sockets()
            self._dirs_before = {
                directory: _subdirectories(directory) for directory in self._watched_dirs()
            }
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            subreaper = subprocess.Popen(
                [
                    sys.executable,
                    str(SUBREAPER),
                    "--parent",
                    str(os.getpid()),
                    "--",
                    "containerd",
                    "--config",
                    str(self.config_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                env=env,
            )
        self._subreapers.append(subreaper)

        deadline = time.monotonic() + timeout
        while True:
            code = subreaper.poll()
            if code is not None:
                raise ContainerdError(
                    f"containerd exited with status {code} while starting; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self._socket_accepts():
                remaining = max(1.0, deadline - time.monotonic())
                if self.ctr("version", check=False, timeout=remaining).returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise ContainerdError(
                    f"containerd did not answer on {self.address} within {timeout} s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)
        children = psutil.Process(subreaper.pid).children()
        daemons = [child for child in children if child.name() == "containerd"]
        if len(daemons) != 1:
            raise ContainerdError(f"cannot find containerd below the subreaper: {children}")
        self._daemon = daemons[0]

    def _socket_accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.address))
            except OSError:
                return False
        return True

    def stop_daemon(self, timeout: float = 10.0) -> None:
        """Stop only the containerd daemon: SIGTERM by PID, SIGKILL after ``timeout`` seconds.

        Shims and containers keep running (still reaped by their subreaper); :meth:`start`
        starts a new daemon on the same state. Does nothing if the daemon is not running.
        """
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        try:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            _kill_quietly(daemon)
            with contextlib.suppress(psutil.NoSuchProcess):
                daemon.wait(5)

    def kill_daemon(self, timeout: float = 10.0) -> None:
        """SIGKILL only the containerd daemon, by PID (a crash: no shutdown of its own), and
        wait until it is gone (reaped by its subreaper). Shims and containers keep running;
        :meth:`start` starts a new daemon on the same state. Does nothing if it is not running.
        """
        daemon, self._daemon = self._daemon, None
        if daemon is None:
            return
        _kill_quietly(daemon)
        with contextlib.suppress(psutil.NoSuchProcess):
            daemon.wait(timeout)

    def hold_shim_events(self) -> None:
        """Make the next :meth:`start` serve ttrpc on another path, so that the running shims
        (which dial the path they were started with) cannot forward events until
        :meth:`release_shim_events`. With it, a test subscribes to a restarted daemon before
        any shim can deliver what it kept while the daemon was down; otherwise events
        forwarded in the moment between the daemon's start and the subscription are lost.
        """
        if self.running:
            raise ContainerdError("hold_shim_events needs the daemon down")
        if self._shims_ttrpc_address is None:
            self._shims_ttrpc_address = self.ttrpc_address
            self.ttrpc_address = self.base_dir / "held.ttrpc"
        # The killed daemon's socket refuses connections; the shims keep retrying.
        self._shims_ttrpc_address.unlink(missing_ok=True)

    def release_shim_events(self) -> None:
        """Let the running shims reach the daemon's ttrpc socket (see :meth:`hold_shim_events`)."""
        if self._shims_ttrpc_address is None:
            raise ContainerdError("release_shim_events without hold_shim_events")
        self._shims_ttrpc_address.unlink(missing_ok=True)
        self._shims_ttrpc_address.symlink_to(self.ttrpc_address)

    def stop(self) -> None:
        """Stop everything and remove every trace; idempotent, safe after a failed start.

        In order: close event subscriptions; stop the daemon (:meth:`stop_daemon`); SIGKILL, by
        PID, every process that was a descendant of a subreaper before that, or still is (shims,
        containers, ...), until each subreaper has exited (it exits once it has no child left);
        ``runc delete --force`` containers whose bundle is below ``base_dir``; unmount every
        mount point below ``base_dir`` (deepest first, ``umount -l`` as a fallback); remove the
        shim sockets this daemon left in ``/run/containerd/s``, the ctr FIFO directories its
        shims had open, and the empty per-namespace directories (cgroups, runc roots) created
        since :meth:`start`; remove ``base_dir``. The shared directories ``/run/containerd``,
        ``/run/containerd/{s,fifo,runc}`` stay (any containerd host has them, and a concurrent
        shim may be about to use them). Every step runs even if an earlier one failed; failures
        are raised together at the end.
        """
        if self._stopped:
            return
        self._stopped = True
        errors: list[str] = []

        for subscription in self._subscriptions:
            try:
                subscription.close()
            except Exception as error:
                errors.append(f"closing ctr events (pid {subscription.pid}): {error!r}")
        self._subscriptions.clear()

        snapshot: list[psutil.Process] = []
        for subreaper in self._subreapers:
            with contextlib.suppress(psutil.NoSuchProcess):
                snapshot.extend(psutil.Process(subreaper.pid).children(recursive=True))
        fifo_dirs = fifo_dirs_open_by(snapshot)
        try:
            self.stop_daemon()
        except Exception as error:
            errors.append(f"stopping containerd: {error!r}")
        for process in snapshot:
            _kill_quietly(process)
        for subreaper in self._subreapers:
            kill_subreaper_tree(subreaper, errors)

        for runc_root in self.runc_roots:  # <root>/<namespace>/<id>
            delete_runc_containers(sorted(runc_root.glob("*/*/state.json")), self.base_dir,
                                   errors)
        unmount_all_below(self.base_dir, errors)
        self._remove_shim_sockets(errors)
        self._remove_forkserver_files()
        self._remove_shim_registrations(errors)
        for fifo_dir in fifo_dirs:
            shutil.rmtree(fifo_dir, ignore_errors=True)
        self._remove_new_empty_dirs()
        if self.base_dir.exists():
            try:
                shutil.rmtree(self.base_dir)
            except OSError as error:
                errors.append(f"removing {self.base_dir}: {error!r}")
        if errors:
            raise ContainerdError("stopping the private containerd:\n" + "\n".join(errors))

    # -------------------------------------------------------------------- cleanup helpers

    def _watched_dirs(self) -> list[Path]:
        """Directories whose new, empty sub-directories :meth:`stop` removes."""
        return [*cgroup_hierarchies(), *self.runc_roots]

    def _remove_new_empty_dirs(self) -> None:
        """rmdir the sub-directories of cgroup hierarchies and runc roots made since start.

        These are the per-namespace parents (``/<ns>`` cgroups, ``<runc root>/<ns>``) that runc
        creates and never removes. rmdir only removes an empty directory (a cgroup without
        tasks or child cgroups), so one still used by anybody else stays; failures are ignored
        for that reason. Directories that existed before the first :meth:`start` are never
        touched.
        """
        if self._dirs_before is None:
            return
        for directory, before in self._dirs_before.items():
            for name in sorted(_subdirectories(directory) - before):
                with contextlib.suppress(OSError):
                    os.rmdir(directory / name)

    @staticmethod
    def _shim_sockets() -> set[str]:
        try:
            return set(os.listdir(SHIM_SOCKET_DIR))
        except FileNotFoundError:
            return set()

    def _remove_forkserver_files(self) -> None:
        """The socket, lock and log of pyshim's fork-server for this containerd's address
        (the fork-server itself died with the process tree)."""
        stem = forkclient.socket_path(str(self.address)).removesuffix(".sock")
        for suffix in (".sock", ".lock", ".log"):
            Path(stem + suffix).unlink(missing_ok=True)

    def _remove_shim_registrations(self, errors: list[str]) -> None:
        """Registry files (``pyshim ps``'s, under ``$PYSHIM_RUN_DIR/shims``) of this
        containerd's shims that did not remove their own (a test SIGKILLed them): those whose
        bundle lies below ``base_dir``. Other containerds' files stay."""
        directory = Path(self.env.get(registry.RUN_DIR_VARIABLE) or registry.DEFAULT_RUN_DIR)
        prefix = str(self.base_dir) + "/"
        try:
            entries = sorted((directory / "shims").glob("*.json"))
        except OSError:
            return
        for entry in entries:
            try:
                bundle = json.loads(entry.read_bytes()).get("bundle", "")
            except (OSError, ValueError):
                continue  # being written or removed by its shim, or not ours to judge
            if isinstance(bundle, str) and bundle.startswith(prefix):
                try:
                    entry.unlink(missing_ok=True)
                except OSError as error:
                    errors.append(f"removing shim registration {entry}: {error!r}")

    def _remove_shim_sockets(self, errors: list[str]) -> None:
        """Remove sockets in /run/containerd/s that appeared since start and nobody serves.

        Which sockets are ours: a name is the SHA-256 of ``<grpc address>/<ns>/<id>`` and our
        grpc address is unique, but we do not know every ``<ns>/<id>`` a test used (and other
        shims may use other name schemes), so we cannot recompute the names. Instead we take
        the entries created after :meth:`start` ran, and skip any that is still bound by a live
        socket (listed in /proc/net/unix): once our whole process tree is dead, a bound socket
        belongs to another containerd (e.g. a concurrent test run) and must stay. An unbound
        one is stale whoever made it (runc-v2 itself removes stale sockets), so removing it is
        harmless. The directory itself is left in place: a concurrent shim may be about to bind
        in it.
        """
        if self._sockets_before is None:
            return
        new = self._shim_sockets() - self._sockets_before
        if not new:
            return
        try:
            bound = bound_unix_socket_paths()
        except OSError as error:
            errors.append(f"reading /proc/net/unix: {error!r}")
            return
        for name in sorted(new):
            path = SHIM_SOCKET_DIR / name
            if str(path) in bound:
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                errors.append(f"removing shim socket {path}: {error!r}")

    # --------------------------------------------------------------------------- clients

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ctr --address <sock> --namespace <namespace> ARGS...`` and capture its output.

        With ``check`` a non-zero exit status raises :class:`CtrError` (which shows stdout and
        stderr); a timeout always raises it (ctr is killed first).
        """
        argv = self.ctr_argv(*args, namespace=namespace)
        try:
            result = subprocess.run(
                argv,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise CtrError(
                argv, None, _text(error.stdout), _text(error.stderr), f"timed out after {timeout} s"
            ) from error
        if check and result.returncode != 0:
            raise CtrError(
                argv,
                result.returncode,
                result.stdout,
                result.stderr,
                f"exit status {result.returncode}",
            )
        return result

    def ctr_argv(self, *args: str, namespace: str = "default") -> list[str]:
        """``ctr --address <sock> --namespace <namespace> ARGS...``, with ``--fifo-dir``
        :attr:`fifo_dir` for the subcommands that make FIFOs (see :func:`with_fifo_dir`)."""
        return ["ctr", "--address", str(self.address), "--namespace", namespace,
                *with_fifo_dir(args, self.fifo_dir)]

    def subscribe_events(self, timeout: float = 20.0) -> EventSubscription:
        """Start ``ctr events`` and return once it is subscribed (see :class:`EventSubscription`).

        Readiness: creates and removes a namespace ``pyshim-e2e-sync-<random>`` and waits for
        its ``/namespaces/delete`` line, retrying with a new name until one is seen (those
        lines are filtered out). The subscription is closed by :meth:`stop` at the latest.
        """
        stderr_path = self.base_dir / f"ctr-events-{len(self._subscriptions)}.stderr"
        subscription = EventSubscription(
            ["ctr", "--address", str(self.address), "events"], stderr_path
        )
        self._subscriptions.append(subscription)
        deadline = time.monotonic() + timeout
        try:
            while True:
                name = _SYNC_PREFIX + secrets.token_hex(6)
                self.ctr("namespaces", "create", name)
                self.ctr("namespaces", "remove", name)
                if subscription._saw_sync(name, 0.5):
                    return subscription
                if time.monotonic() > deadline:
                    raise ContainerdError(
                        f"ctr events did not subscribe within {timeout} s; stderr:\n"
                        f"{_tail(stderr_path)}"
                    )
        except BaseException:
            subscription.close()
            raise

    def subscribe_events_before_start(self, connect_timeout: float = 60.0) -> EventSubscription:
        """Start ``ctr events`` while the daemon is down (after :meth:`kill_daemon`), so that
        it subscribes within milliseconds of the next :meth:`start`; then call
        :meth:`sync_events` on it after :meth:`start`. (``subscribe_events`` after ``start``
        misses what arrives while its ``ctr`` starts and subscribes.)

        ctr's dialer retries a missing socket every 10 ms until ``--connect-timeout`` (but
        fails at once on a refused connection), so the socket a killed daemon left is removed
        first; containerd removes it itself when it starts anyway.
        """
        if self.running:
            raise ContainerdError("subscribe_events_before_start needs the daemon down")
        self.address.unlink(missing_ok=True)
        stderr_path = self.base_dir / f"ctr-events-{len(self._subscriptions)}.stderr"
        subscription = EventSubscription(
            ["ctr", "--address", str(self.address), "--connect-timeout",
             f"{connect_timeout}s", "events"],
            stderr_path,
        )
        self._subscriptions.append(subscription)
        return subscription

    def sync_events(self, subscription: EventSubscription, timeout: float = 20.0) -> None:
        """Return once ``subscription`` is live (see :meth:`subscribe_events`)."""
        deadline = time.monotonic() + timeout
        while True:
            name = _SYNC_PREFIX + secrets.token_hex(6)
            self.ctr("namespaces", "create", name)
            self.ctr("namespaces", "remove", name)
            if subscription._saw_sync(name, 0.5):
                return
            if time.monotonic() > deadline:
                raise ContainerdError(
                    f"ctr events did not subscribe within {timeout} s; stderr:\n"
                    f"{_tail(subscription.stderr_path)}"
                )

    # --------------------------------------------------------------------- context manager

    def __enter__(self) -> PrivateContainerd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    return output if isinstance(output, str) else output.decode(errors="replace")
