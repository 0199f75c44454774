"""`delete` after a daemon that deleted its container itself: the reply it leaves in the bundle
(`record_clean_delete`), and the launcher printing it without Python once the daemon's socket
is gone (bin/pyshim), or leaving `delete` to Python while the socket is still there."""

from __future__ import annotations

import secrets
import socket
import subprocess
from pathlib import Path

from pyshim.bundle import DELETE_REPLY, ExitRecord, write_exit_record
from pyshim.protos.containerd.task.v2 import shim_pb2
from pyshim.shim.delete import record_clean_delete
from pyshim.shim.wire import encode_delete_response

SHIM = str(Path(__file__).resolve().parents[2] / "bin" / "containerd-shim-pyshim-v1")
EXITED_AT_NS = 1_700_000_000_123_456_789


def _bundle(tmp_path: Path, socket_path: Path, status: int) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "address").write_text(f"unix://{socket_path}")
    (bundle / "init.pid").write_text("4242")
    write_exit_record(str(bundle / "init.exit"), ExitRecord(status, EXITED_AT_NS, 4242))
    return bundle


def _delete(bundle: Path, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess[
        bytes]:
    # A container id runc does not know: the Python path's `runc delete --force` finds nothing.
    argv = [SHIM, "-namespace", "default", "-address", "/nonexistent/containerd.sock",
            "-id", f"pyshim-test-{secrets.token_hex(4)}", *flags, "delete"]
    return subprocess.run(argv, cwd=cwd or bundle, capture_output=True, timeout=60, check=True)


def test_the_reply_is_what_delete_would_print(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, tmp_path / "gone.sock", status=7)
    assert record_clean_delete(str(bundle))
    reply = shim_pb2.DeleteResponse.FromString((bundle / DELETE_REPLY).read_bytes())
    assert (reply.pid, reply.exit_status) == (4242, 7)
    assert reply.exited_at.seconds * 1_000_000_000 + reply.exited_at.nanos == EXITED_AT_NS
    (bundle / DELETE_REPLY).unlink()
    assert _delete(bundle).stdout == reply.SerializeToString()  # the Python path


def test_no_reply_without_a_sound_exit_record(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, tmp_path / "gone.sock", status=0)
    (bundle / "init.exit").write_text('{"status": 0, "exi')
    assert not record_clean_delete(str(bundle))
    (bundle / "init.exit").unlink()
    assert not record_clean_delete(str(bundle))
    assert not (bundle / DELETE_REPLY).exists()


def test_the_launcher_prints_the_reply_once_the_socket_is_gone(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, tmp_path / "gone.sock", status=7)
    # Not what Python would print (its record says 7): shows which path answered.
    marker = encode_delete_response(4242, 99, 1, 2)
    (bundle / DELETE_REPLY).write_bytes(marker)
    in_bundle = _delete(bundle)
    assert (in_bundle.stdout, in_bundle.stderr) == (marker, b"")
    # containerd passes -bundle too; from elsewhere that names the bundle.
    elsewhere = _delete(bundle, "-bundle", str(bundle), cwd=tmp_path)
    assert elsewhere.stdout == marker


def test_delete_is_pythons_while_the_socket_is_there(tmp_path: Path) -> None:
    socket_path = tmp_path / "live.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(socket_path))
        listener.listen(1)
        bundle = _bundle(tmp_path, socket_path, status=7)
        (bundle / DELETE_REPLY).write_bytes(encode_delete_response(4242, 99, 1, 2))
        reply = shim_pb2.DeleteResponse.FromString(_delete(bundle).stdout)
        assert reply.exit_status == 7  # from init.exit: Python's answer
        assert socket_path.exists()  # a live shim's socket stays
    finally:
        listener.close()


def test_a_flag_whose_value_is_delete_is_no_action(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, tmp_path / "gone.sock", status=7)
    (bundle / DELETE_REPLY).write_bytes(encode_delete_response(4242, 99, 1, 2))
    result = subprocess.run([SHIM, "-namespace", "default", "-id", "delete"], cwd=bundle,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode != 0
    assert result.stdout == b""
