"""Tests of the e2e harness itself: the private containerd and the subreaper, for real."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import require_e2e
from tests.e2e.containerd import (
    CTR_FIFO_DIR,
    DEFAULT_DISABLED_PLUGINS,
    DEFAULT_RUNC_ROOT,
    SUBREAPER,
    CtrError,
    PrivateContainerd,
    fifo_dirs_open_by,
    make_busybox_rootfs,
    mounts_under,
    parse_event_line,
    with_fifo_dir,
)
from tests.e2e.containerd_versions import (
    SUPPORTED_RELEASES,
    containerd_behaviour,
    containerd_version,
    containerd_version_string,
)

BUSYBOX = "/bin/busybox"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def gone(process: psutil.Process) -> bool:
    """True once ``process`` no longer exists at all (a zombie still exists)."""
    return not process.is_running()


def dead(process: psutil.Process) -> bool:
    """True once ``process`` has exited (a zombie, or reaped)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def fresh_dir() -> Iterator[Path]:
    """A new /tmp/pyshim-e2e-* directory for a PrivateContainerd the test stops itself."""
    path = Path(tempfile.mkdtemp(prefix="pyshim-e2e-", dir="/tmp"))
    try:
        yield path
    finally:
        if path.exists() and not mounts_under(path):
            shutil.rmtree(path)


def need_runc_and_busybox() -> None:
    require_e2e(("containerd", "ctr", "runc"), (BUSYBOX,))


def run_detached_container(containerd: PrivateContainerd, container_id: str) -> psutil.Process:
    """``ctr run -d`` a busybox ``sleep`` and return the shim serving it."""
    rootfs = make_busybox_rootfs(containerd.base_dir / f"rootfs-{container_id}")
    containerd.ctr("run", "-d", "--rootfs", str(rootfs), container_id, "/bin/sleep", "1000")
    shims = [
        child
        for child in psutil.Process(containerd.subreaper_pid).children()
        if child.name() == "containerd-shim-runc-v2"
        and f"-id {container_id} " in " ".join(child.cmdline()) + " "
    ]
    assert len(shims) == 1, shims
    return shims[0]


# ------------------------------------------------------------------------ the private daemon


def test_start_reports_server_version_of_a_tested_release(containerd: PrivateContainerd) -> None:
    out = containerd.ctr("version").stdout
    server = re.search(r"Server:\s*\n\s*Version:\s+(\S+)", out)
    assert server is not None, out
    # The daemon is the containerd on PATH, and a release whose behaviour the tests know.
    assert server[1] == containerd_version_string(), out
    assert containerd_version() in SUPPORTED_RELEASES, out
    assert containerd.running
    assert psutil.Process(containerd.pid).ppid() == containerd.subreaper_pid
    assert containerd.address.is_socket()
    assert containerd.ttrpc_address.is_socket()
    assert str(containerd.ttrpc_address) == str(containerd.address) + ".ttrpc"


def test_namespaces_ls_works(containerd: PrivateContainerd) -> None:
    assert containerd.ctr("namespaces", "ls", "-q").stdout == ""
    containerd.ctr("namespaces", "create", "e2e-harness")
    assert containerd.ctr("namespaces", "ls", "-q").stdout.split() == ["e2e-harness"]


def test_config_disables_plugins_and_the_rest_load(containerd: PrivateContainerd) -> None:
    config = containerd.config_path.read_text()
    assert config.startswith("version = 2\n")
    assert f'address = "{containerd.address}"' in config
    plugins = containerd.ctr("plugins", "ls").stdout.splitlines()[1:]
    assert plugins
    loaded_in_order = [line.split()[0] + "." + line.split()[1] for line in plugins]
    loaded = set(loaded_in_order)
    assert not loaded & set(DEFAULT_DISABLED_PLUGINS)
    assert "io.containerd.runtime.v2.task" in loaded
    statuses = zip(loaded_in_order, plugins, strict=True)
    skipped = {name for name, line in statuses if line.split()[-1] != "ok"}
    assert skipped == containerd_behaviour().plugins_skipped_unconfigured, plugins
    assert all(line.split()[-1] in ("ok", "skip") for line in plugins), plugins
    # The opt plugin works below base_dir instead of /opt/containerd.
    assert (containerd.opt / "bin").is_dir()


def test_extra_config_is_appended(fresh_dir: Path) -> None:
    extra = '[plugins."io.containerd.runtime.v2.task"]\n  sched_core = false\n'
    daemon = PrivateContainerd(fresh_dir, extra_config=extra)
    assert daemon.config_text().endswith("\n" + extra)
    with daemon:
        daemon.ctr("version")


def test_base_dir_too_long_is_refused() -> None:
    with pytest.raises(ValueError, match="sun_path"):
        PrivateContainerd(Path("/tmp/" + "x" * 90))


def test_ctr_failure_shows_output(containerd: PrivateContainerd) -> None:
    with pytest.raises(CtrError) as caught:
        containerd.ctr("containers", "info", "no-such-container")
    assert caught.value.returncode == 1
    assert "not found" in caught.value.stderr
    assert "not found" in str(caught.value)
    result = containerd.ctr("containers", "info", "no-such-container", check=False)
    assert result.returncode == 1


def test_stop_kills_everything_and_removes_base_dir(fresh_dir: Path) -> None:
    daemon = PrivateContainerd(fresh_dir)
    try:
        daemon.start()
        subreaper = psutil.Process(daemon.subreaper_pid)
        process = psutil.Process(daemon.pid)
        events = daemon.subscribe_events()
        ctr_events = psutil.Process(events.pid)
        # Stacked mounts below base_dir are unmounted too.
        outer = fresh_dir / "mnt"
        inner = outer / "inner"
        outer.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "e2e-outer", str(outer)], check=True)
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "e2e-inner", str(inner)], check=True)
        assert mounts_under(fresh_dir) == [str(inner), str(outer)]
    finally:
        daemon.stop()
    assert gone(process)
    assert gone(subreaper)
    assert gone(ctr_events)
    assert not fresh_dir.exists()
    assert mounts_under(fresh_dir) == []
    daemon.stop()  # idempotent
    with pytest.raises(RuntimeError):
        daemon.start()


def test_stop_after_failed_start_cleans_up(fresh_dir: Path) -> None:
    daemon = PrivateContainerd(fresh_dir, extra_config="this is not toml")
    with pytest.raises(RuntimeError, match="containerd exited"):
        daemon.start(timeout=10)
    daemon.stop()
    assert not fresh_dir.exists()


def test_events_subscription(containerd: PrivateContainerd) -> None:
    events = containerd.subscribe_events()
    containerd.ctr("namespaces", "create", "e2e-events")
    containerd.ctr("namespaces", "label", "e2e-events", "a=b")
    line = events.wait_for(lambda text: "/namespaces/update" in text, timeout=10)
    parsed = parse_event_line(line)
    under_changed = containerd_behaviour().namespace_events_under_changed_namespace
    assert parsed.namespace == ("e2e-events" if under_changed else "default")
    assert parsed.topic == "/namespaces/update"
    assert parsed.event == {"name": "e2e-events", "labels": {"a": "b"}}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC", parsed.timestamp)
    created = events.wait_for_topic("/namespaces/create")
    assert created.event == {"name": "e2e-events"}
    assert created.namespace == parsed.namespace
    # Only our events: the synchronisation namespaces are filtered out.
    assert [parse_event_line(text).topic for text in events.lines()] == [
        "/namespaces/create",
        "/namespaces/update",
    ]
    with pytest.raises(TimeoutError):
        events.wait_for(lambda text: "/tasks/exit" in text, timeout=0.2)
    events.close()
    events.close()


# ----------------------------------------------------- containers and shims left behind


def test_stop_cleans_up_a_running_container(containerd: PrivateContainerd) -> None:
    need_runc_and_busybox()
    shim = run_detached_container(containerd, "e2e-left-behind")
    # The shim daemonized: its `start` parent exited and the subreaper adopted it.
    assert shim.ppid() == containerd.subreaper_pid
    container = shim.children()[0]
    socket_path = containerd.shim_socket_path("default", "e2e-left-behind")
    assert socket_path.is_socket()
    (fifo_dir,) = fifo_dirs_open_by([shim], containerd.fifo_dir)
    assert not fifo_dirs_open_by([shim])  # nothing in ctr's shared /run/containerd/fifo
    runc_state = DEFAULT_RUNC_ROOT / "default" / "e2e-left-behind"
    assert (runc_state / "state.json").exists()

    containerd.stop()  # no task kill, no delete: stop() must clean up alone

    assert gone(shim)
    assert gone(container)
    assert not runc_state.exists()
    assert not socket_path.exists()
    assert not fifo_dir.exists()
    assert not containerd.base_dir.exists()


def test_ctr_fifos_stay_below_base_dir(containerd: PrivateContainerd) -> None:
    """The harness gives ctr ``--fifo-dir <base_dir>/fifo``: a task whose FIFOs nobody removes
    (its shim killed, so no ``ctr task rm`` deletes them) leaves nothing in ctr's shared
    /run/containerd/fifo (one directory per such test container before), and stop() removes
    them with base_dir."""
    need_runc_and_busybox()
    assert with_fifo_dir(["task", "exec", "--exec-id", "e", "c", "sh"], Path("/f")) == [
        "task", "exec", "--fifo-dir", "/f", "--exec-id", "e", "c", "sh"]
    assert with_fifo_dir(["run", "-d"], Path("/f")) == ["run", "--fifo-dir", "/f", "-d"]
    assert with_fifo_dir(["task", "ls"], Path("/f")) == ["task", "ls"]
    container_id = f"e2e-fifo-{secrets.token_hex(4)}"
    shim = run_detached_container(containerd, container_id)
    (fifo_dir,) = fifo_dirs_open_by([shim], containerd.fifo_dir)
    assert sorted(path.name for path in fifo_dir.iterdir()) == [
        f"{container_id}-{stream}" for stream in ("stderr", "stdin", "stdout")]
    shim.kill()
    # Dead (a zombie holds no fd): stop() can no longer find its FIFOs through the shim.
    wait_until(lambda: dead(shim))
    containerd.stop()
    assert not containerd.base_dir.exists()
    assert not list(CTR_FIFO_DIR.glob(f"*/{container_id}-*"))


def test_shims_survive_a_daemon_restart_and_stop_reaps_both_trees(
    containerd: PrivateContainerd,
) -> None:
    need_runc_and_busybox()
    shim = run_detached_container(containerd, "e2e-restart")
    first_subreaper = psutil.Process(containerd.subreaper_pid)
    old_daemon = psutil.Process(containerd.pid)

    containerd.stop_daemon()
    assert gone(old_daemon)
    assert not gone(shim) and not gone(first_subreaper)
    containerd.start()
    assert containerd.pid != old_daemon.pid
    tasks = containerd.ctr("tasks", "ls").stdout
    assert re.search(r"^e2e-restart\s+\d+\s+RUNNING", tasks, re.MULTILINE), tasks

    containerd.stop()
    assert gone(shim)
    assert gone(first_subreaper)
    assert not containerd.base_dir.exists()


# ------------------------------------------------------------------------------ subreaper


def start_subreaper(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SUBREAPER), "--", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143)])
def test_subreaper_propagates_the_exit_status(script: str, code: int) -> None:
    process = start_subreaper(script)
    try:
        assert process.wait(10) == code
    finally:
        finish(process)


def test_subreaper_reports_a_missing_command() -> None:
    result = subprocess.run(
        [sys.executable, str(SUBREAPER), "--", "/nonexistent/e2e-command"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 127
    assert "cannot run" in result.stderr


def test_subreaper_forwards_sigterm() -> None:
    process = start_subreaper('trap "exit 5" TERM; echo ready; while :; do sleep 0.05; done')
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(10) == 5
    finally:
        finish(process)


def test_subreaper_reaps_an_orphan_and_waits_for_it() -> None:
    process = start_subreaper("sleep 30 & echo $!; exit 0")
    orphan: psutil.Process | None = None
    try:
        assert process.stdout is not None
        orphan = psutil.Process(int(process.stdout.readline()))
        # sh exits at once; its background child is re-parented to the subreaper.
        wait_until(lambda: orphan is not None and orphan.ppid() == process.pid)
        time.sleep(0.2)
        assert process.poll() is None, "the subreaper must wait for the orphan too"
        orphan.kill()
        assert process.wait(10) == 0
        assert gone(orphan), "the orphan was not reaped (zombie)"
    finally:
        if orphan is not None and orphan.is_running():
            orphan.kill()
        finish(process)


def test_subreaper_kills_its_tree_when_its_parent_exits() -> None:
    # outer subreaper -> sh, which starts an inner subreaper in the background and exits. The
    # inner one (now adopted by the outer one) sees its parent gone: SIGTERM to its command
    # (a sleep that ignores SIGTERM), SIGKILL after the grace period, then it exits itself.
    inner = 'trap "" TERM; echo main $$; exec sleep 300'
    outer = '"$1" "$2" --parent $$ --kill-grace 0.3 -- sh -c "$3" & echo inner $!; exit 0'
    process = subprocess.Popen(
        [
            sys.executable,
            str(SUBREAPER),
            "--",
            "sh",
            "-c",
            outer,
            "sh",
            sys.executable,
            str(SUBREAPER),
            inner,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: dict[str, psutil.Process] = {}
    try:
        assert process.stdout is not None
        for _ in range(2):
            role, pid = process.stdout.readline().split()
            pids[role] = psutil.Process(int(pid))
        assert process.wait(10) == 0
        assert gone(pids["inner"])
        assert gone(pids["main"])
        assert process.stderr is not None
        assert "exited: SIGTERM now" in process.stderr.read()
    finally:
        for leftover in pids.values():
            if leftover.is_running():
                leftover.kill()
        finish(process)
        if process.stderr is not None:
            process.stderr.close()
