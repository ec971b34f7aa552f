"""Fault injection for fire drills: tasks that never finish and belong to no owner.

``POST /debug/leak?tasks=N`` starts N of them and ``DELETE /debug/leak`` ends them, so the whole
path (gauge, alert, operator quarantine) can be exercised on a real pod. Off unless enabled.
With ``orphaned=1`` the tasks belong instead to a session that closed long ago: orphans, for the
orphaned-tasks alert.
"""

from __future__ import annotations

import asyncio
import contextvars

from media_service.leak.ownership import Owner, owned_by

#: Injected tasks alive at once, across calls: enough to trip any sane baseline, small enough
#: that a mistyped drill cannot exhaust the process.
MAX_INJECTED_TASKS = 100_000


async def injected_leak() -> None:
    """Wait forever. The name is what a task dump shows for the drill's tasks."""
    await asyncio.get_running_loop().create_future()


def parse_task_count(raw: str | None, limit: int = MAX_INJECTED_TASKS) -> int:
    """The ``tasks`` query parameter: a whole number from 1 to ``limit``."""
    if raw is None or not raw.strip():
        raise ValueError("missing the tasks parameter")
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"tasks must be a whole number, not {raw!r}") from None
    if not 1 <= count <= limit:
        raise ValueError(f"tasks must be from 1 to {limit}")
    return count


def parse_flag(raw: str | None) -> bool:
    """An optional on/off query parameter: absent, 0/false or 1/true."""
    if raw is None or raw.strip().lower() in ("", "0", "false"):
        return False
    if raw.strip().lower() in ("1", "true"):
        return True
    raise ValueError(f"expected 1/true or 0/false, not {raw!r}")


class FaultInjector:
    def __init__(self, limit: int = MAX_INJECTED_TASKS) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def start(self, count: int, *, orphaned: bool = False) -> int:
        """Start ``count`` leaked tasks on the running loop; returns how many are alive now."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if self.active + count > self.limit:
            raise ValueError(f"at most {self.limit} injected tasks at once ({self.active} alive)")
        # A fresh context, so that a drill started from an owned scope gets only the owner it asks for.
        contextvars.Context().run(self._spawn, count, orphaned)
        return self.active

    def _spawn(self, count: int, orphaned: bool) -> None:
        if not orphaned:
            self._create(count)
            return
        # Closed forever ago: its tasks are orphans from the first sample, whatever the grace.
        with owned_by(Owner("fault-injection", closed_at=float("-inf"))):
            self._create(count)

    def _create(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            task = loop.create_task(injected_leak(), name="injected-leak")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> int:
        """End every injected task and wait until they are gone; returns how many were ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)
