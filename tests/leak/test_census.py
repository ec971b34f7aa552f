from __future__ import annotations

import asyncio
import threading

from media_service.leak.census import Census, take_census
from media_service.leak.ownership import Owner, TaskOwnership, owned_by


def test_unexplained_leaves_out_live_and_closing_tasks_and_load_threads() -> None:
    census = Census(live=30, closing=4, orphaned=2, unowned=5, threads=9, session_threads=3, pool_threads=2)
    assert census.tasks == 41
    assert census.total == 50
    assert census.unexplained == 5 + 2 + 9 - 3 - 2


async def test_census_counts_tasks_by_owner_state(ownership: TaskOwnership) -> None:
    release = asyncio.Event()
    live, closing, gone = Owner("live"), Owner("closing"), Owner("gone")
    tasks = [asyncio.create_task(release.wait()) for _ in range(2)]
    for owner, n in ((live, 5), (closing, 3), (gone, 4)):
        with owned_by(owner):
            tasks += [asyncio.create_task(release.wait()) for _ in range(n)]
    closing.close(now=100.0)
    gone.close(now=90.0)
    try:
        census = take_census(ownership, grace=5.0, now=102.0)
    finally:
        release.set()
        await asyncio.gather(*tasks)
    assert (census.live, census.closing, census.orphaned) == (5, 3, 4)
    assert census.unowned == 2 + 1  # the two plain tasks and the test's own task
    assert census.threads == threading.active_count()
    assert census.session_threads == 0


async def test_decoder_and_default_executor_threads_are_load(ownership: TaskOwnership) -> None:
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    # Real default-executor workers, busy until released, so they are alive when counted.
    started = [loop.run_in_executor(None, stop.wait) for _ in range(2)]
    before = take_census(ownership, grace=1.0)
    names = ("audio-decoder", "video-decoder", "other", "asyncio_x")
    workers = [threading.Thread(target=stop.wait, name=name) for name in names]
    for worker in workers:
        worker.start()
    try:
        census = take_census(ownership, grace=1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
        await asyncio.gather(*started)
    assert census.session_threads == 2
    assert census.pool_threads == before.pool_threads >= 2  # "asyncio_x" is not a pool worker
    assert census.threads == before.threads + 4
    assert census.unexplained == before.unexplained + 2  # "other" and "asyncio_x"
