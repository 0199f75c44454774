"""Text for people: `pyshim ps` tables and `pyshim inspect`'s readable form. Formatting only."""

from __future__ import annotations

from collections.abc import Sequence

from pyshim.ops.snapshot import ContainerView, ProcessView, Snapshot


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(header), *(len(row[index]) for row in rows)])
              for index, header in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths,
                                                                        strict=True)).rstrip()
                     for line in lines)


def short_time(text: str | None) -> str:
    """RFC 3339 to the second: enough for a table."""
    if not text:
        return "-"
    return text.split(".")[0] + "Z" if "." in text else text


def _exit(process: ProcessView) -> str:
    if process.exit_status is None:
        return "-"
    return f"{process.exit_status}{' oom' if process.oom else ''}"


def ps(snapshot: Snapshot) -> str:
    shim_rows = [[str(shim.pid), shim.state, shim.namespace, shim.address,
                  short_time(shim.started_at), str(len(shim.containers)),
                  shim.socket.removeprefix("unix://")] for shim in snapshot.shims]
    process_rows = []
    for container in snapshot.containers():
        for process in container.processes:
            status = process.status if container.shim_state == "serving" else \
                f"{process.status} (shim {container.shim_state})"
            process_rows.append([
                container.id, process.id if process.kind == "exec" else "init",
                container.namespace, str(container.shim_pid), str(process.pid or "-"), status,
                _exit(process), short_time(process.exited_at)])
    server_rows = [[str(server.pid or "-"), server.state, server.address or "?",
                    server.socket] for server in snapshot.forkservers]
    parts = [
        table(["SHIM", "STATE", "NAMESPACE", "CONTAINERD", "STARTED", "CONTAINERS", "SOCKET"],
              shim_rows) if shim_rows else "no pyshim shims",
        table(["CONTAINER", "PROCESS", "NAMESPACE", "SHIM", "PID", "STATUS", "EXIT",
               "EXITED AT"], process_rows) if process_rows else "no containers",
        table(["FORK-SERVER", "STATE", "CONTAINERD", "SOCKET"], server_rows)
        if server_rows else "no fork-servers",
    ]
    problems = [f"shim {shim.pid}: {shim.error}" for shim in snapshot.shims if shim.error]
    if problems:
        parts.append("\n".join(problems))
    return "\n\n".join(parts)


def inspect(container: ContainerView, shim_socket: str, shim_started_at: str) -> str:
    lines = [
        f"container   {container.id}",
        f"namespace   {container.namespace}",
        f"status      {container.status}",
        f"bundle      {container.bundle}",
        f"containerd  {container.address}",
        f"shim        pid {container.shim_pid}, {container.shim_state}, started "
        f"{shim_started_at or '-'}",
        f"socket      {shim_socket}",
        f"log         {container.bundle}/log (a FIFO: containerd copies it into its own log)",
        "processes:",
    ]
    for process in container.processes:
        lines.append(f"  {process.kind} {process.id}: pid {process.pid or '-'}, "
                     f"{process.status}")
        if process.exit_status is not None:
            lines.append(f"    exit status {process.exit_status} at {process.exited_at}"
                         f"{' (OOM killed)' if process.oom else ''}")
        if process.problem:
            lines.append(f"    record: {process.problem}")
        if process.stdio:
            streams = ", ".join(f"{name}={path or '-'}" for name, path in process.stdio.items())
            lines.append(f"    stdio: {streams}{' (terminal)' if process.terminal else ''}")
    return "\n".join(lines)
