"""The monitor's own start (spec §4.1 steps 6-7), in the daemon conmon's fork (or the warm
monitor-server) made: take the sync and attach channels, leave the caller's stdio (unless
passthrough logging), own session, child subreaper; and what every monitor writes on the
parent's channels. Imported after the fork, so it may import what it likes.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pyshim.conmon import channels
from pyshim.conmon.launch import is_open, pexit, take_channel
from pyshim.conmon.validate import ConmonConfig


@dataclass(frozen=True, slots=True)
class Channels:
    """The parent's channels as open fds (CLOEXEC), None where the parent gave none."""

    sync: int | None = None
    #: Kept open only for `--exec-attach`: its second byte releases the runtime child.
    start: int | None = None
    attach: int | None = None


@dataclass(frozen=True, slots=True)
class Daemon:
    """What the monitor starts from: its configuration, channels, and the fds >= 3 that were
    open when the process started (reserved ports: closed right before the exit files)."""

    config: ConmonConfig
    channels: Channels
    inherited_fds: tuple[int, ...]
    #: The caller's stdio, kept for passthrough logging (else 0-2 are /dev/null by now).
    passthrough: bool


def become_daemon(config: ConmonConfig, environ: Mapping[str, str], inherited: tuple[int, ...],
                  start: int | None) -> Daemon:
    """Take the sync (and attach) channel, leave the caller's stdio (unless passthrough
    logging), own session, child subreaper. Raises LaunchError/ChannelError (stderr is still
    the caller's then)."""
    inherited = tuple(fd for fd in inherited if is_open(fd))  # the start channel is closed
    sync = take_channel(environ, channels.SYNC_PIPE)
    attach = None
    if config.options.exec_attach:
        attach = take_channel(environ, channels.ATTACH_PIPE)
        if attach is None:
            raise pexit("--attach specified but _OCI_ATTACHPIPE was not", errno.ENOENT)
    passthrough = config.log_drivers.passthrough
    if not passthrough:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        for target in (0, 1, 2):
            os.dup2(null, target)  # dup2 clears CLOEXEC on the target
        os.close(null)
    with contextlib.suppress(OSError):
        os.setsid()  # EPERM with --sync when the parent made us a group leader: fine
    _set_child_subreaper()
    kept = tuple(fd for fd in inherited if fd not in (sync, attach, start))
    return Daemon(config=config, channels=Channels(sync=sync, start=start, attach=attach),
                  inherited_fds=kept, passthrough=passthrough)


def _set_child_subreaper() -> None:
    import prctl

    try:
        prctl.set_child_subreaper(1)
    except OSError as error:
        raise pexit("Failed to set as subreaper", error.errno or errno.EPERM) from None


def write_message(fd: int | None, data: bytes) -> int | None:
    """One message in one write(); EPIPE/ECONNRESET means the parent has gone (podman closes
    the exec sync channel after the PID): the channel is closed, and None returned so the
    caller stops using it. Otherwise returns `fd`."""
    if fd is None:
        return None
    try:
        os.write(fd, data)
    except (BrokenPipeError, ConnectionResetError):
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    return fd
