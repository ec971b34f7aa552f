"""ASGI middleware: a request or WebSocket connection owns the task that serves it.

uvicorn starts that task with a fresh context before the app runs, so without this every request
in flight counts as unowned, and a burst of slow requests (WHIP offers) looks like a leak. The
owner closes when the app returns; a handler that never returns stays live, like a session.
"""

from __future__ import annotations

import asyncio
import itertools

from starlette.types import ASGIApp, Receive, Scope, Send

from media_service.leak.ownership import Owner, TaskOwnership, owned_by


class OwnRequests:
    def __init__(self, app: ASGIApp, ownership: TaskOwnership) -> None:
        self.app = app
        self.ownership = ownership
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] not in ("http", "websocket") or task is None:
            await self.app(scope, receive, send)
            return
        owner = Owner(f"{scope['type']}:{next(self._ids)}")
        previous = self.ownership.owner_of(task)
        self.ownership.adopt(task, owner)
        try:
            with owned_by(owner):
                await self.app(scope, receive, send)
        finally:
            owner.close()
            # In-process servers (tests) run the app in the caller's task: give it back.
            if previous is None:
                self.ownership.disown(task)
            else:
                self.ownership.adopt(task, previous)
