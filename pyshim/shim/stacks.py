"""A stuck shim's stacks as text: every asyncio task (its await chain, and the future it waits
for) and every thread; and a writer that puts such text on a non-blocking fd without ever
blocking the event loop.

Reads only: it never cancels, wakes or otherwise touches what it describes. Runs on the loop
(task objects are not thread-safe); the work is bounded by the number of tasks and frames.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

#: Frames shown per task or thread at most (deeper ones are counted, not shown).
MAX_FRAMES = 40
#: How long the log writer waits for a full log FIFO to drain before dropping the rest.
WRITE_TIMEOUT = 10.0


def dump(title: str) -> str:
    """The whole dump: a header, each task (by name), each thread, an end marker."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    frames = sys._current_frames()
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [f"=== pyshim debug dump: {title}, pid {os.getpid()}, {stamp}: "
             f"{len(tasks)} asyncio tasks, {len(frames)} threads ==="]
    for task in tasks:
        lines += describe_task(task)
    for ident, frame in frames.items():
        lines.append(f"--- thread {names.get(ident, '?')} ({ident:#x})")
        lines += _format_frames(traceback.extract_stack(frame)[::-1])
    lines.append(f"=== end of pyshim debug dump (pid {os.getpid()}) ===")
    return "\n".join(lines) + "\n"


def describe_task(task: asyncio.Task[Any]) -> list[str]:
    """`--- task NAME: waits for X`, then its await chain, innermost call first."""
    state = "done" if task.done() else "running" if _is_current(task) else "pending"
    waiting = getattr(task, "_fut_waiter", None)  # the future the task is suspended on
    head = f"--- task {task.get_name()!r} ({state})"
    if waiting is not None:
        head += f": waits for {_describe_future(waiting)}"
    lines = [head]
    frames = await_chain(task.get_coro())
    lines += _format_frames(
        [traceback.FrameSummary(f.f_code.co_filename, f.f_lineno or 0, f.f_code.co_name)
         for f in reversed(frames)])
    return lines


def await_chain(awaitable: Any) -> list[FrameType]:
    """The frames of a coroutine and of every coroutine or generator it awaits, outermost
    first (what the task would unwind through when woken)."""
    frames: list[FrameType] = []
    current = awaitable
    while current is not None and len(frames) < MAX_FRAMES * 4:
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None) \
            or getattr(current, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None) \
            or getattr(current, "ag_await", None)
    return frames


def _describe_future(future: Any) -> str:
    if isinstance(future, asyncio.Task):
        return f"task {future.get_name()!r}"
    text = repr(future)
    return text if len(text) <= 300 else text[:297] + "..."


def _is_current(task: asyncio.Task[Any]) -> bool:
    try:
        return asyncio.current_task() is task
    except RuntimeError:
        return False


def _format_frames(summaries: list[traceback.FrameSummary]) -> list[str]:
    shown = summaries[:MAX_FRAMES]
    lines = [f"    {summary.name} ({summary.filename}:{summary.lineno})"
             + (f": {summary.line}" if summary.line else "") for summary in shown]
    if len(summaries) > len(shown):
        lines.append(f"    ... {len(summaries) - len(shown)} more frames")
    return lines


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def write_nonblocking(fd: int, data: bytes, timeout: float = WRITE_TIMEOUT) -> bool:
    """Write all of `data` to a non-blocking fd (the log FIFO), waiting on the loop while it
    is full; gives up (False) after `timeout` s or when nobody reads or the fd cannot be
    polled. Never blocks the loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
            continue
        except BlockingIOError:
            pass
        except OSError:
            return False
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        writable: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_writer(fd, _wake, writable)
        except (OSError, ValueError):
            return False  # not pollable: the next write is the last try
        try:
            await asyncio.wait_for(writable, remaining)
        except TimeoutError:
            return False
        finally:
            loop.remove_writer(fd)
    return True
