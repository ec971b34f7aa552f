"""The task dump behind ``GET /debug/tasks``: Python's counterpart of Go's goroutine profile.

Live tasks are grouped by coroutine name and owner state, largest group first, each with one
sample await stack. Python 3.11's ``Task.get_stack()`` shows only the outermost frame of a
suspended task, so the stack here follows the ``cr_await`` chain down to what the task waits on.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from media_service.leak.ownership import OwnerState, TaskOwnership

# Numbered threads of one pool ("asyncio_3", "Thread-7 (worker)") are one group.
_THREAD_NUMBER = re.compile(r"(?<=[_-])\d+\b")


def coroutine_name(coro: object) -> str:
    """``module.qualname`` of a task's coroutine (or the type name of another awaitable)."""
    qualname = getattr(coro, "__qualname__", None) or type(coro).__qualname__
    frame = _frame_of(coro)
    module = frame.f_globals.get("__name__") if frame is not None else None
    return f"{module}.{qualname}" if module else qualname


def _frame_of(awaitable: object) -> FrameType | None:
    for attr in ("cr_frame", "gi_frame", "ag_frame"):
        frame: FrameType | None = getattr(awaitable, attr, None)
        if frame is not None:
            return frame
    return None


def _awaited_by(awaitable: object) -> object | None:
    for attr in ("cr_await", "gi_yieldfrom", "ag_await"):
        inner: object | None = getattr(awaitable, attr, None)
        if inner is not None:
            return inner
    return None


def _awaitable_name(awaitable: object) -> str:
    kind = type(awaitable)
    if kind.__qualname__ == "FutureIter":  # what `await future` leaves in cr_await (C asyncio)
        return "asyncio.Future"
    return f"{kind.__module__}.{kind.__qualname__}"


def await_stack(task: asyncio.Future[Any], limit: int = 32) -> list[str]:
    """Frames from the task's coroutine down to the innermost await, then what that awaits."""
    get_coro = getattr(task, "get_coro", None)
    awaitable: object | None = get_coro() if get_coro is not None else None
    lines: list[str] = []
    while awaitable is not None and len(lines) < limit:
        frame = _frame_of(awaitable)
        if frame is None:
            lines.append(f"awaiting {_awaitable_name(awaitable)}")
            break
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        awaitable = _awaited_by(awaitable)
    return lines


@dataclass
class _Group:
    coroutine: str
    owner: OwnerState
    count: int = 0
    owners: set[str] = field(default_factory=set)
    example: asyncio.Future[Any] | None = None


def _task_name(example: object, identities: bool) -> str | None:
    if not isinstance(example, asyncio.Task):
        return None
    name = example.get_name()
    return name if identities else name.split(":", 1)[0]  # "hub-writer:alice/phone" → "hub-writer"


def task_dump(
    ownership: TaskOwnership,
    *,
    grace: float,
    now: float | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    stack_limit: int = 32,
    owner_names_limit: int = 5,
    identities: bool = False,
) -> dict[str, Any]:
    """A JSON-ready dump of the pending tasks of ``loop`` (the running loop by default) and the threads.

    Owner names (session ids) and task names (which carry user and device names) identify clients:
    they are left out unless ``identities`` is asked for, so that whoever reads the admin port
    (a scraper, a dashboard, an operator's Event) learns nothing about who is connected."""
    now = time.monotonic() if now is None else now
    groups: dict[tuple[str, OwnerState], _Group] = {}
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        owner = ownership.owner_of(task)
        state = OwnerState.UNOWNED if owner is None else owner.state(now, grace)
        name = coroutine_name(task.get_coro())
        group = groups.get((name, state))
        if group is None:
            group = groups[(name, state)] = _Group(name, state, example=task)
        group.count += 1
        if owner is not None:
            group.owners.add(owner.name)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.coroutine, g.owner))
    threads = threading.enumerate()
    thread_groups = Counter(_THREAD_NUMBER.sub("N", t.name) for t in threads)
    return {
        "tasks": len(tasks),
        "threads": len(threads),
        "groups": [
            {
                "coroutine": g.coroutine,
                "owner": g.owner.value,
                "count": g.count,
                "owners": len(g.owners),
                "owner_names": sorted(g.owners)[:owner_names_limit] if identities else [],
                "task_name": _task_name(g.example, identities),
                "stack": await_stack(g.example, stack_limit) if g.example is not None else [],
            }
            for g in ordered
        ],
        "thread_groups": [
            {"name": name, "count": count}
            for name, count in sorted(thread_groups.items(), key=lambda item: (-item[1], item[0]))
        ],
    }


def dump_text(dump: dict[str, Any]) -> str:
    """The dump for a terminal, like Go's goroutine profile: count, coroutine and owner state per
    group, largest first, each with its sample stack indented below."""
    lines = [f"{dump['tasks']} tasks, {dump['threads']} threads", ""]
    for group in dump["groups"]:
        owners = f" ({group['owners']} owners)" if group["owners"] else ""
        lines.append(f"{group['count']} × {group['coroutine']} [{group['owner']}]{owners}")
        lines.extend(f"    {frame}" for frame in group["stack"])
        lines.append("")
    lines.append("threads:")
    lines.extend(f"{t['count']} × {t['name']}" for t in dump["thread_groups"])
    return "\n".join(lines) + "\n"
