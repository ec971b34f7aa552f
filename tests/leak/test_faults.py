from __future__ import annotations

import asyncio

import pytest

from media_service.leak.faults import FaultInjector, parse_task_count


@pytest.mark.parametrize(
    ("raw", "message"),
    [(None, "missing"), ("", "missing"), ("abc", "whole number"), ("0", "from 1 to 10"), ("11", "from 1 to 10")],
)
def test_bad_counts_are_refused_with_a_reason(raw: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task_count(raw, limit=10)


def test_good_counts_parse() -> None:
    assert parse_task_count(" 7 ", limit=10) == 7


async def test_injected_tasks_stay_alive_until_stopped(no_task_leak: None) -> None:
    faults = FaultInjector(limit=50)
    assert faults.start(20) == 20
    assert faults.start(5) == 25
    await asyncio.sleep(0.05)
    injected = [t for t in asyncio.all_tasks() if t.get_name() == "injected-leak"]
    assert len(injected) == 25
    assert not any(t.done() for t in injected)
    assert await faults.stop() == 25
    assert faults.active == 0
    assert all(t.cancelled() for t in injected)
    assert await faults.stop() == 0


async def test_the_limit_holds_across_calls(no_task_leak: None) -> None:
    faults = FaultInjector(limit=10)
    faults.start(8)
    try:
        with pytest.raises(ValueError, match="at most 10"):
            faults.start(3)
        assert faults.active == 8
    finally:
        await faults.stop()
