"""Which owner each asyncio task belongs to.

A task created while code runs inside ``owned_by(owner)`` belongs to that owner: a context
variable marks the scope and a task factory, called synchronously by ``loop.create_task``,
reads it at creation time. Tasks copy their creator's context, so the tasks that aiortc starts
for a session, and the tasks those start, all belong to the session. An owner is a WebRTC
session or a WebSocket connection: anything whose tasks load explains while it is open.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_current_owner: contextvars.ContextVar[Owner | None] = contextvars.ContextVar("media_task_owner", default=None)


class OwnerState(StrEnum):
    """Where a task stands: one name each in code, ``media_asyncio_tasks{owner}``, ``/debug/tasks``,
    alerts and docs (the glossary in docs/leak-detection.md)."""

    LIVE = "live"  # its owner is open: load
    CLOSING = "closing"  # owner closed less than the grace period ago: still winding down, load
    ORPHANED = "orphaned"  # owner closed longer ago than the grace period: a leak
    UNOWNED = "unowned"  # created outside every owner's scope


@dataclass(eq=False, slots=True)
class Owner:
    """A scope whose tasks are explained by load while it is open (a session, a connection)."""

    name: str
    closed_at: float | None = None

    def close(self, now: float | None = None) -> None:
        """Mark the owner closed; its tasks become orphans once the grace period has passed."""
        if self.closed_at is None:
            self.closed_at = time.monotonic() if now is None else now

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def state(self, now: float, grace: float) -> OwnerState:
        if self.closed_at is None:
            return OwnerState.LIVE
        return OwnerState.CLOSING if now - self.closed_at < grace else OwnerState.ORPHANED


def current_owner() -> Owner | None:
    return _current_owner.get()


@contextmanager
def owned_by(owner: Owner) -> Iterator[Owner]:
    """Tasks created inside this block (and their descendants) belong to ``owner``."""
    token = _current_owner.set(owner)
    try:
        yield owner
    finally:
        _current_owner.reset(token)


class TaskOwnership:
    """Remembers the owner of every owned task, through a task factory installed on a loop.

    Unowned tasks are not recorded, so a process without sessions pays only the factory call.
    The map holds tasks weakly: a finished task that nobody references drops out by itself.
    """

    def __init__(self) -> None:
        self._owners: weakref.WeakKeyDictionary[asyncio.Future[Any], Owner] = weakref.WeakKeyDictionary()
        # loop -> (our factory, the one it wraps); typeshed's factory type lacks `context`.
        self._installed: dict[asyncio.AbstractEventLoop, tuple[Callable[..., Any], Any]] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Put the factory on ``loop``, wrapping any factory already there."""
        if loop in self._installed:
            return
        previous: Any = loop.get_task_factory()
        owners = self._owners

        def factory(
            loop: asyncio.AbstractEventLoop,
            coro: Coroutine[Any, Any, Any],
            *,
            context: contextvars.Context | None = None,
        ) -> asyncio.Future[Any]:
            if previous is None:
                task: asyncio.Future[Any] = asyncio.Task(coro, loop=loop, context=context)
            elif context is None:
                task = previous(loop, coro)
            else:
                task = previous(loop, coro, context=context)
            # The factory runs in the creator's context unless an explicit one was passed.
            owner = _current_owner.get() if context is None else context.get(_current_owner)
            if owner is not None:
                owners[task] = owner
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]
        self._installed[loop] = (factory, previous)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restore the factory that was there before, unless someone replaced ours since."""
        factory, previous = self._installed.pop(loop, (None, None))
        current: object = loop.get_task_factory()
        if factory is not None and current is factory:
            loop.set_task_factory(previous)

    def owner_of(self, task: asyncio.Future[Any]) -> Owner | None:
        return self._owners.get(task)

    def owned(self) -> list[tuple[asyncio.Future[Any], Owner]]:
        """A snapshot of every recorded task (done ones too, while referenced) and its owner."""
        return list(self._owners.items())

    def adopt(self, task: asyncio.Future[Any], owner: Owner) -> None:
        """Give an already running task to ``owner`` (a framework created it before we could)."""
        self._owners[task] = owner

    def disown(self, task: asyncio.Future[Any]) -> None:
        self._owners.pop(task, None)

    def adopt_current(self, owner: Owner) -> None:
        """Give the current task, and every task it creates from now on, to ``owner``.

        For a handler that a server started in a task of its own, such as a WebSocket endpoint.
        """
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop
            task = None
        if task is None:
            raise RuntimeError("adopt_current() must be called from inside a task")
        self.adopt(task, owner)
        _current_owner.set(owner)  # lasts for the rest of this task's own context

    def state_of(self, task: asyncio.Future[Any], now: float, grace: float) -> OwnerState:
        owner = self._owners.get(task)
        return OwnerState.UNOWNED if owner is None else owner.state(now, grace)
