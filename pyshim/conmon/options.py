"""The typed, frozen result of parsing conmon's command line (spec §2.3): one attribute per
option, defaults as conmon's globals. Imported after `--version` has been answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyshim.conmon.args import DEFAULT_SOCKET_DIR

if TYPE_CHECKING:
    from pyshim.conmon.args import Values


@dataclass(frozen=True, slots=True)
class ConmonOptions:
    """What the command line said, before validation (defaults as conmon's globals)."""

    api_version: bool = False
    bundle: str | None = None
    cid: str | None = None
    conmon_pidfile: str | None = None
    container_pidfile: str | None = None
    cuuid: str | None = None
    exec: bool = False
    exec_attach: bool = False
    exec_process_spec: str | None = None
    exit_command: str | None = None
    exit_command_args: tuple[str, ...] = ()
    exit_delay: int = 0
    exit_dir: str | None = None
    leave_stdin_open: bool = False
    log_level: str | None = None
    log_paths: tuple[str, ...] = ()
    log_size_max: int = -1
    log_global_size_max: int = -1
    log_tag: str | None = None
    name: str | None = None
    no_new_keyring: bool = False
    no_pivot: bool = False
    no_sync_log: bool = False
    persist_dir: str | None = None
    replace_listen_pid: bool = False
    restore: str | None = None
    runtime: str | None = None
    runtime_args: tuple[str, ...] = ()
    runtime_opts: tuple[str, ...] = ()  # --runtime-opt and its hidden alias --restore-arg
    sdnotify_socket: str | None = None
    socket_dir_path: str = DEFAULT_SOCKET_DIR
    stdin: bool = False
    sync: bool = False
    syslog: bool = False
    systemd_cgroup: bool = False
    terminal: bool = False
    timeout: int = 0
    version: bool = False
    full_attach: bool = False
    seccomp_notify_socket: str | None = None
    seccomp_notify_plugins: str | None = None

    @classmethod
    def from_values(cls, values: Values) -> ConmonOptions:
        """From what `args.parse` found (attributes it did not set keep conmon's defaults)."""
        return cls(**values)  # type: ignore[arg-type]
