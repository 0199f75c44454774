"""The typed, frozen result of parsing conmon's command line (spec §2.3): one attribute per
option, defaults as conmon's globals. Lean (every launched process imports it): no dataclasses."""

from __future__ import annotations

from pyshim.conmon.args import DEFAULT_SOCKET_DIR
from pyshim.conmon.frozen import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyshim.conmon.args import Values

#: Every option's attribute and conmon's default for it.
DEFAULTS: dict[str, object] = {
    "api_version": False,
    "bundle": None,
    "cid": None,
    "conmon_pidfile": None,
    "container_pidfile": None,
    "cuuid": None,
    "exec": False,
    "exec_attach": False,
    "exec_process_spec": None,
    "exit_command": None,
    "exit_command_args": (),
    "exit_delay": 0,
    "exit_dir": None,
    "leave_stdin_open": False,
    "log_level": None,
    "log_paths": (),
    "log_size_max": -1,
    "log_global_size_max": -1,
    "log_tag": None,
    "name": None,
    "no_new_keyring": False,
    "no_pivot": False,
    "no_sync_log": False,
    "persist_dir": None,
    "replace_listen_pid": False,
    "restore": None,
    "runtime": None,
    "runtime_args": (),
    "runtime_opts": (),
    "sdnotify_socket": None,
    "socket_dir_path": DEFAULT_SOCKET_DIR,
    "stdin": False,
    "sync": False,
    "syslog": False,
    "systemd_cgroup": False,
    "terminal": False,
    "timeout": 0,
    "version": False,
    "full_attach": False,
    "seccomp_notify_socket": None,
    "seccomp_notify_plugins": None,
}


class ConmonOptions(Frozen):
    """What the command line said, before validation. `--runtime-opt` and its hidden alias
    `--restore-arg` share `runtime_opts`, interleaved in order."""

    __slots__ = tuple(DEFAULTS)

    api_version: bool
    bundle: str | None
    cid: str | None
    conmon_pidfile: str | None
    container_pidfile: str | None
    cuuid: str | None
    exec: bool
    exec_attach: bool
    exec_process_spec: str | None
    exit_command: str | None
    exit_command_args: tuple[str, ...]
    exit_delay: int
    exit_dir: str | None
    leave_stdin_open: bool
    log_level: str | None
    log_paths: tuple[str, ...]
    log_size_max: int
    log_global_size_max: int
    log_tag: str | None
    name: str | None
    no_new_keyring: bool
    no_pivot: bool
    no_sync_log: bool
    persist_dir: str | None
    replace_listen_pid: bool
    restore: str | None
    runtime: str | None
    runtime_args: tuple[str, ...]
    runtime_opts: tuple[str, ...]
    sdnotify_socket: str | None
    socket_dir_path: str
    stdin: bool
    sync: bool
    syslog: bool
    systemd_cgroup: bool
    terminal: bool
    timeout: int
    version: bool
    full_attach: bool
    seccomp_notify_socket: str | None
    seccomp_notify_plugins: str | None

    def __init__(self, **values: object) -> None:
        unknown = values.keys() - DEFAULTS.keys()
        if unknown:
            raise TypeError(f"unknown options: {sorted(unknown)}")
        self._set(**{**DEFAULTS, **values})

    @classmethod
    def from_values(cls, values: Values) -> ConmonOptions:
        """From what `args.parse` found (attributes it did not set keep conmon's defaults)."""
        return cls(**values)
