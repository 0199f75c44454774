"""The shim registry's files (one per shim, removed only by their owner) and `pyshim ps`'s
table for a snapshot with a serving and a dead shim."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyshim.ops import registry, render
from pyshim.ops.snapshot import ContainerView, ProcessView, ShimView, Snapshot


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(registry.RUN_DIR_VARIABLE, str(tmp_path))
    return tmp_path


def entry(pid: int, socket_name: str) -> registry.ShimEntry:
    return registry.ShimEntry(pid=pid, socket=f"unix:///run/containerd/s/{socket_name}",
                              namespace="default", id="c1", address="/run/c.sock",
                              bundle="/b/default/c1", started_at_ns=1)


def test_registry_entries_are_written_read_and_removed_by_their_owner(run_dir: Path) -> None:
    path = registry.register(entry(10, "aa"))
    assert path == str(run_dir / "shims" / "aa.json")
    registry.register(entry(11, "bb"))
    assert [(e.pid, e.socket) for e in registry.entries()] == [
        (10, "unix:///run/containerd/s/aa"), (11, "unix:///run/containerd/s/bb")]
    registry.unregister(path, pid=99)  # not the owner (another daemon took the socket)
    assert Path(path).exists()
    registry.unregister(path, pid=10)
    assert [e.pid for e in registry.entries()] == [11]
    (run_dir / "shims" / "cc.json").write_text("{not json")
    assert [e.pid for e in registry.entries()] == [11]  # unreadable entries are skipped


def test_ps_table_marks_containers_of_a_gone_shim() -> None:
    serving = ShimView(pid=100, state="serving", namespace="default", id="web",
                       address="/run/c.sock", socket="unix:///s/1", bundle="/b/web",
                       started_at="2026-01-02T03:04:05.123456789Z")
    serving.containers.append(ContainerView(
        id="web", namespace="default", bundle="/b/web", status="running", shim_pid=100,
        shim_state="serving", address="/run/c.sock",
        processes=[ProcessView(id="web", kind="init", pid=101, status="running"),
                   ProcessView(id="e1", kind="exec", pid=102, status="stopped",
                               exit_status=0, exited_at="2026-01-02T03:04:06.5Z")]))
    gone = ShimView(pid=200, state="gone", namespace="ns2", id="db", address="/run/c.sock",
                    socket="unix:///s/2", bundle="/b/db", started_at="")
    gone.containers.append(ContainerView(
        id="db", namespace="ns2", bundle="/b/db", status="stopped (shim gone)", shim_pid=200,
        shim_state="gone", address="/run/c.sock",
        processes=[ProcessView(id="db", kind="init", pid=201, status="stopped",
                               exit_status=137, exited_at="2026-01-02T03:04:07.0Z", oom=True)]))
    text = render.ps(Snapshot(taken_at="", run_dir="/run/pyshim", shims=[serving, gone],
                              forkservers=[]))
    rows = [line.split() for line in text.splitlines()]
    assert ["web", "e1", "default", "100", "102", "stopped", "0", "2026-01-02T03:04:06Z"] in rows
    assert ["db", "init", "ns2", "200", "201", "stopped", "(shim", "gone)", "137", "oom",
            "2026-01-02T03:04:07Z"] in rows
    assert "no fork-servers" in text
