"""The heap trim after sessions close (memory.py): once per delay, never while nothing closes."""

from __future__ import annotations

import asyncio

from media_service.memory import MemoryTrimmer, libc_trim


def test_glibc_trim_is_found_and_runs() -> None:
    trim = libc_trim()
    assert trim is not None, "no malloc_trim in this C library: closed sessions' memory stays in the heap"
    trim()


async def test_closes_within_the_delay_share_one_trim() -> None:
    trims: list[float] = []
    trimmed = asyncio.Event()

    def trim() -> None:
        trims.append(asyncio.get_running_loop().time())
        trimmed.set()

    trimmer = MemoryTrimmer(trim, delay=0.05)
    for _ in range(5):
        trimmer.session_closed()
    await asyncio.wait_for(trimmed.wait(), 5)
    assert len(trims) == 1
    trimmed.clear()
    trimmer.session_closed()  # a later close: a trim of its own
    await asyncio.wait_for(trimmed.wait(), 5)
    assert len(trims) == 2


async def test_a_cancelled_trim_is_unscheduled_and_nothing_is_scheduled_without_malloc_trim() -> None:
    trimmer = MemoryTrimmer(lambda: None, delay=60)
    trimmer.session_closed()
    assert trimmer._pending is not None
    trimmer.cancel()
    assert trimmer._pending is None
    without = MemoryTrimmer(None, delay=60)
    without.session_closed()
    assert without._pending is None
