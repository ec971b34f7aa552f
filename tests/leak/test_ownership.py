from __future__ import annotations

import asyncio
import contextvars
import gc
from typing import Any

import pytest
import uvloop

from media_service.leak.ownership import Owner, OwnerState, TaskOwnership, current_owner, owned_by


async def _park(event: asyncio.Event) -> None:
    await event.wait()


async def test_tasks_created_in_a_scope_belong_to_its_owner(ownership: TaskOwnership) -> None:
    release = asyncio.Event()
    session = Owner("session:a")
    outside = asyncio.create_task(_park(release))
    with owned_by(session):
        inside = asyncio.create_task(_park(release))
        fut = asyncio.ensure_future(_park(release))  # aiortc's way of starting tasks
    assert current_owner() is None
    try:
        assert ownership.owner_of(inside) is session
        assert ownership.owner_of(fut) is session
        assert ownership.owner_of(outside) is None
    finally:
        release.set()
        await asyncio.gather(outside, inside, fut)


async def test_descendants_inherit_the_owner_of_the_scope_they_were_started_from(
    ownership: TaskOwnership,
) -> None:
    release, spawned = asyncio.Event(), asyncio.Event()
    children: list[asyncio.Task[None]] = []

    async def spawner() -> None:
        # Started from an owned scope; creates its child later, outside any `with` of its own.
        await asyncio.sleep(0)
        children.append(asyncio.create_task(_park(release)))
        spawned.set()
        await release.wait()

    session = Owner("session:b")
    with owned_by(session):
        parent = asyncio.create_task(spawner())
    await asyncio.wait_for(spawned.wait(), 10)
    assert ownership.owner_of(children[0]) is session
    release.set()
    await asyncio.gather(parent, *children)


async def test_an_explicit_context_decides_the_owner(ownership: TaskOwnership) -> None:
    release = asyncio.Event()
    session = Owner("session:c")
    loop = asyncio.get_running_loop()
    with owned_by(session):
        fresh = loop.create_task(_park(release), context=contextvars.Context())
        copied_ctx = contextvars.copy_context()
    copied = loop.create_task(_park(release), context=copied_ctx)
    assert ownership.owner_of(fresh) is None
    assert ownership.owner_of(copied) is session
    release.set()
    await asyncio.gather(fresh, copied)


async def test_adopt_current_owns_the_handler_task_and_what_it_starts(ownership: TaskOwnership) -> None:
    release, spawned = asyncio.Event(), asyncio.Event()
    connection = Owner("ws:1")
    started: list[asyncio.Task[None]] = []

    async def handler() -> None:
        # Like a WebSocket endpoint: the server created this task before the app could scope it.
        ownership.adopt_current(connection)
        started.append(asyncio.create_task(_park(release)))
        spawned.set()
        await release.wait()

    task = asyncio.create_task(handler())
    await asyncio.wait_for(spawned.wait(), 10)
    assert ownership.owner_of(task) is connection
    assert ownership.owner_of(started[0]) is connection
    assert current_owner() is None  # the adoption stayed inside the handler's context
    release.set()
    await asyncio.gather(task, *started)


def test_adopt_current_outside_a_task_is_refused() -> None:
    with pytest.raises(RuntimeError, match="inside a task"):
        TaskOwnership().adopt_current(Owner("x"))


async def test_finished_tasks_drop_out_of_the_map(ownership: TaskOwnership) -> None:
    with owned_by(Owner("session:d")):
        tasks = [asyncio.create_task(asyncio.sleep(0)) for _ in range(50)]
    await asyncio.gather(*tasks)
    assert len(ownership._owners) == 50
    del tasks
    await asyncio.sleep(0)  # the gather's outer future lets go of its children on the next turn
    gc.collect()
    assert len(ownership._owners) == 0


def test_owner_state_follows_close_and_grace() -> None:
    owner = Owner("session:e")
    assert owner.state(now=100.0, grace=5.0) is OwnerState.LIVE
    owner.close(now=100.0)
    owner.close(now=200.0)  # closing twice keeps the first time
    assert owner.closed_at == 100.0
    assert owner.state(now=104.9, grace=5.0) is OwnerState.CLOSING
    assert owner.state(now=105.0, grace=5.0) is OwnerState.ORPHANED


async def test_install_wraps_the_previous_factory_and_uninstall_restores_it(no_task_leak: None) -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    def naming_factory(loop: asyncio.AbstractEventLoop, coro: Any, *, context: Any = None) -> asyncio.Task[Any]:
        seen.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, context=context)

    loop.set_task_factory(naming_factory)
    ownership = TaskOwnership()
    try:
        ownership.install(loop)
        ownership.install(loop)  # idempotent: no factory wrapped twice
        with owned_by(Owner("session:f")) as owner:
            task = asyncio.create_task(asyncio.sleep(0))
        await task
        assert seen == ["sleep"]
        assert ownership.owner_of(task) is owner
        ownership.uninstall(loop)
        assert loop.get_task_factory() is naming_factory
    finally:
        loop.set_task_factory(None)


@pytest.fixture(scope="module")
def uvloop_initialised() -> None:
    """libuv opens a few process-wide descriptors with its first loop; they are not a leak."""
    loop = uvloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def test_ownership_works_on_uvloop(uvloop_initialised: None) -> None:
    """uvicorn picks uvloop when it is installed; its task factory call must be served too."""

    async def scenario() -> tuple[Owner | None, Owner | None, Owner]:
        ownership = TaskOwnership()
        loop = asyncio.get_running_loop()
        ownership.install(loop)
        try:
            release = asyncio.Event()
            with owned_by(Owner("session:uv")) as owner:
                owned = asyncio.create_task(_park(release))
                fresh = loop.create_task(_park(release), context=contextvars.Context())
            result = ownership.owner_of(owned), ownership.owner_of(fresh), owner
            release.set()
            await asyncio.gather(owned, fresh)
            return result
        finally:
            ownership.uninstall(loop)

    loop = uvloop.new_event_loop()
    try:
        owned_owner, fresh_owner, owner = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert owned_owner is owner
    assert fresh_owner is None
