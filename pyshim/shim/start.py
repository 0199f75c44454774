"""`start`: pick the shim for this task, leave a listening socket, print its address, exit.

Lean on purpose (its run time is measured, `python -X importtime`): no asyncio, no protobuf,
not even `json`, `socket` or `contextlib` (`_socket` and `jsonlite` instead). Binds and listens
before the daemon exists, so the address is dialable the moment it is printed; the warm
fork-server forks the daemon (`forkclient`), or else this process does (`daemonize`), and it
serves through `daemon.serve(config, listener)` without re-executing anything.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from pyshim import jsonlite
from pyshim.bundle import write_address
from pyshim.identifiers import InvalidIdentifier, validate
from pyshim.shim import wire
from pyshim.shim.args import ShimArgs

RUNTIME_NAME = "io.containerd.pyshim.v1"
DEFAULT_SOCKET_DIR = "/run/containerd/s"
# First present annotation names the group (one shim per pod); our own first.
GROUP_ANNOTATIONS = (
    "io.containerd.pyshim.v1.group",
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
)
MAX_SOCKET_PATH = 106  # runc-v2 refuses longer paths; sun_path holds 108 with the NUL


class StartError(Exception):
    """start cannot go on; printed as `io.containerd.pyshim.v1: <message>`."""


class DaemonConfig:
    """Everything the serving daemon needs, decided by `start` (or by a fork-server).

    Plain classes here and below: dataclasses would cost every `start` ~10 ms of imports.
    """

    __slots__ = ("address", "bundle", "debug", "id", "namespace", "options", "publish_binary",
                 "socket_path", "ttrpc_address")

    def __init__(
        self,
        *,
        namespace: str,
        id: str,
        address: str,
        ttrpc_address: str,
        bundle: str,
        socket_path: str,
        debug: bool = False,
        publish_binary: str = "",
        options: tuple[str, bytes] = ("", b""),
    ) -> None:
        self.namespace = namespace
        self.id = id
        self.address = address  # containerd's gRPC address (-address)
        self.ttrpc_address = ttrpc_address  # where events go ($TTRPC_ADDRESS)
        self.bundle = bundle
        self.socket_path = socket_path
        self.debug = debug
        self.publish_binary = publish_binary
        # Runtime options Any from start's stdin (or BootstrapParams), as (type_url, value).
        self.options = options


class StartInput:
    """What containerd sent on stdin: legacy options Any, or 2.3+ BootstrapParams."""

    __slots__ = ("bootstrap", "debug", "options", "socket_dir", "ttrpc_address")

    def __init__(
        self,
        options: tuple[str, bytes],
        bootstrap: bool = False,
        socket_dir: str = "",
        ttrpc_address: str = "",
        debug: bool = False,
    ) -> None:
        self.options = options
        self.bootstrap = bootstrap
        self.socket_dir = socket_dir
        self.ttrpc_address = ttrpc_address
        self.debug = debug


def read_start_input(data: bytes, args: ShimArgs) -> StartInput:
    """Spec §1.10.4: BootstrapParams only if it decodes *and* names our id and namespace."""
    if data:
        try:
            params = _bootstrap_params(data)
        except wire.WireError:
            params = None
        if params is not None and params.get(1) == args.id and params.get(2) == args.namespace:
            return _from_bootstrap(data)
        try:
            return StartInput(options=wire.decode_any(data))
        except wire.WireError as error:
            raise StartError(f"cannot decode runtime options on stdin: {error}") from error
    return StartInput(options=("", b""))


def _bootstrap_params(data: bytes) -> dict[int, str] | None:
    found: dict[int, str] = {}
    for number, wire_type, value in wire.fields(data):
        if number in (1, 2, 5, 9) and wire_type == wire.LENGTH and isinstance(value, bytes):
            try:
                found[number] = value.decode()
            except UnicodeDecodeError:
                return None
    return found


def _from_bootstrap(data: bytes) -> StartInput:
    options: tuple[str, bytes] = ("", b"")
    socket_dir = ttrpc_address = ""
    debug = False
    for number, _wire_type, value in wire.fields(data):
        if number == 8 and isinstance(value, bytes) and options == ("", b""):
            # Extension{value = 1 (Any)}: the first one carries the runtime options.
            for inner_number, _, inner in wire.fields(value):
                if inner_number == 1 and isinstance(inner, bytes):
                    options = wire.decode_any(inner)
        elif number == 9 and isinstance(value, bytes):
            socket_dir = value.decode()
        elif number == 5 and isinstance(value, bytes):
            ttrpc_address = value.decode()
        elif number == 3 and isinstance(value, int):
            level = value - (1 << 64) if value >= 1 << 63 else value
            debug = level <= -4  # LOG_LEVEL_DEBUG or TRACE
    return StartInput(options, True, socket_dir, ttrpc_address, debug)


def group_id(bundle: str, container_id: str) -> str:
    """The grouping id from config.json's annotations, else the container id (spec §1.6)."""
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as config:
            annotations = jsonlite.loads(config.read()).get("annotations") or {}  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return container_id
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key) if isinstance(annotations, dict) else None
        if isinstance(value, str) and value:
            return value
    return container_id


def sha256_hex(data: bytes) -> str:
    # The builtin module, not hashlib: importing OpenSSL costs ~12 ms of every start.
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython ≤ 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # CPython ≥ 3.12
        except ImportError:
            from hashlib import sha256
    return str(sha256(data).hexdigest())


def socket_path(socket_dir: str, address: str, namespace: str, group: str) -> str:
    """`<dir>/sha256("<grpc address>/<ns>/<group>")`, as runc-v2 names it."""
    key = os.path.join(address, namespace, group)
    return os.path.join(socket_dir, sha256_hex(key.encode()))


def socket_alive(path: str) -> bool:
    """Whether a shim accepts connections on path (100 ms, as runc-v2 probes)."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    probe.settimeout(0.1)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_or_join(path: str) -> _socket.socket | None:
    """A listening socket at path, or None when a live shim already listens there."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    for _ in range(3):
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
        except OSError as error:
            sock.close()
            if error.errno != errno.EADDRINUSE:
                raise StartError(f"cannot listen on {path}: {error.strerror}") from error
            if socket_alive(path):
                return None
            try:  # noqa: SIM105 (not contextlib: start's imports are timed)
                os.unlink(path)  # stale socket of a dead shim
            except FileNotFoundError:
                pass
            continue
        os.chmod(path, 0o600)
        sock.listen(128)
        return sock
    raise StartError(f"cannot listen on {path}: it keeps being taken")


def start(args: ShimArgs, stdin: bytes) -> int:
    bundle = os.getcwd()
    if not args.id:
        raise StartError("shim id cannot be empty")
    try:
        validate(args.id, "shim id")
        validate(args.namespace, "namespace")
    except InvalidIdentifier as error:
        raise StartError(str(error)) from error
    given = read_start_input(stdin, args)
    socket_dir = given.socket_dir or DEFAULT_SOCKET_DIR
    path = socket_path(socket_dir, args.address, args.namespace, group_id(bundle, args.id))
    if len(path) > MAX_SOCKET_PATH:
        raise StartError(f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes")
    address = "unix://" + path
    listener = bind_or_join(path)
    if listener is not None:
        config = DaemonConfig(
            namespace=args.namespace,
            id=args.id,
            address=args.address,
            ttrpc_address=given.ttrpc_address or os.environ.get("TTRPC_ADDRESS", ""),
            bundle=bundle,
            socket_path=path,
            debug=args.debug or given.debug,
            publish_binary=args.publish_binary,
            options=given.options,
        )
        try:
            _launch_daemon(config, listener)
        except BaseException:
            try:  # noqa: SIM105 (not contextlib: start's imports are timed)
                os.unlink(path)
            except OSError:
                pass
            raise
        finally:
            listener.close()
    write_address(bundle, address)
    reply = (
        wire.encode_bootstrap_result(2, address) if given.bootstrap else address.encode()
    )
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return 0


def _oom_score_adj(pid: int) -> int | None:
    try:
        # Bytes: a text-mode open builds a decoder (~0.2 ms of every start).
        with open(f"/proc/{pid}/oom_score_adj", "rb") as score:
            return int(score.read())
    except (OSError, ValueError):
        return None


def _launch_daemon(config: DaemonConfig, listener: _socket.socket) -> None:
    """A daemon from the warm fork-server if there is one, else forked from this process."""
    from pyshim.shim import forkclient

    score = _oom_score_adj(os.getppid())
    log_fd = open_log(config.bundle)
    try:
        if forkclient.enabled() and forkclient.request_daemon(config, listener, log_fd, score):
            return
        from pyshim.shim.daemonize import spawn_daemon  # cold: imports the daemon after fork

        spawn_daemon(config, listener, log_fd, score)
    finally:
        os.close(log_fd)


def open_log(bundle: str) -> int:
    """The bundle's log FIFO for writing (containerd holds it open for reading, so a
    non-blocking open succeeds), or /dev/null."""
    try:
        return os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def lock_path(socket_path: str) -> str:
    """The daemon lock beside a shim socket (see daemonize.own_listener)."""
    return socket_path + ".lock"
