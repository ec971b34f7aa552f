from __future__ import annotations

import asyncio
import json
import threading

from media_service.leak.ownership import Owner, TaskOwnership, owned_by
from media_service.leak.taskdump import await_stack, coroutine_name, task_dump


async def _inner_wait(release: asyncio.Event) -> None:
    await release.wait()


async def relay_loop(release: asyncio.Event) -> None:
    await _inner_wait(release)


async def keepalive(release: asyncio.Event) -> None:
    await release.wait()


async def test_groups_by_coroutine_and_owner_state_largest_first(ownership: TaskOwnership) -> None:
    release = asyncio.Event()
    live, gone = Owner("session:live"), Owner("session:gone")
    tasks: list[asyncio.Task[None]] = []
    with owned_by(live):
        tasks += [asyncio.create_task(relay_loop(release)) for _ in range(4)]
    with owned_by(gone):
        tasks += [asyncio.create_task(relay_loop(release)) for _ in range(2)]
        tasks += [asyncio.create_task(keepalive(release), name="ka") for _ in range(6)]
    gone.close(now=0.0)
    await asyncio.sleep(0)  # let every task reach its await
    try:
        dump = task_dump(ownership, grace=1.0, now=10.0, identities=True)
        redacted = task_dump(ownership, grace=1.0, now=10.0)
    finally:
        release.set()
        await asyncio.gather(*tasks)
    json.dumps(dump)  # the endpoint serves it as it is
    groups = [(g["coroutine"], g["owner"], g["count"]) for g in dump["groups"]]
    assert groups[:3] == [
        (f"{__name__}.keepalive", "orphaned", 6),
        (f"{__name__}.relay_loop", "live", 4),
        (f"{__name__}.relay_loop", "orphaned", 2),
    ]
    assert dump["tasks"] == 13  # the twelve, and the test's own task
    top = dump["groups"][0]
    assert top["owners"] == 1
    assert top["owner_names"] == ["session:gone"]
    assert top["task_name"] == "ka"
    # Without asking, no owner (session) names; task names only up to their first ':'.
    assert redacted["groups"][0]["owner_names"] == [] and redacted["groups"][0]["owners"] == 1
    relay = dump["groups"][1]["stack"]
    assert "in relay_loop" in relay[0]
    assert "in _inner_wait" in relay[1]
    assert "in Event.wait" in relay[2]
    assert relay[-1] == "awaiting asyncio.Future"


async def test_the_stack_is_cut_at_the_limit(ownership: TaskOwnership) -> None:
    release = asyncio.Event()
    task = asyncio.create_task(relay_loop(release))
    await asyncio.sleep(0)
    try:
        assert len(await_stack(task, limit=2)) == 2
        assert await_stack(task, limit=0) == []
    finally:
        release.set()
        await task


async def test_numbered_threads_of_one_pool_form_one_group(ownership: TaskOwnership) -> None:
    stop = threading.Event()
    pool = [threading.Thread(target=stop.wait, name=f"dumptest_{i}") for i in range(3)]
    for thread in pool:
        thread.start()
    try:
        dump = task_dump(ownership, grace=1.0)
    finally:
        stop.set()
        for thread in pool:
            thread.join(timeout=10)
    assert {"name": "dumptest_N", "count": 3} in dump["thread_groups"]
    assert dump["threads"] >= 4


def test_coroutine_name_of_other_awaitables() -> None:
    coro = keepalive(asyncio.Event())
    try:
        assert coroutine_name(coro) == f"{__name__}.keepalive"
    finally:
        coro.close()
    assert coroutine_name(object()) == "object"
