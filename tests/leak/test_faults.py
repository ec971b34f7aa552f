from __future__ import annotations

import asyncio
import time

import pytest

from media_service.leak.census import take_census
from media_service.leak.faults import FaultInjector, parse_flag, parse_task_count
from media_service.leak.ownership import Owner, OwnerState, TaskOwnership, owned_by


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


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, False), ("", False), ("0", False), ("false", False), ("1", True), ("TRUE", True)]
)
def test_flags_parse(raw: str | None, expected: bool) -> None:
    assert parse_flag(raw) is expected


def test_a_bad_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="1/true or 0/false"):
        parse_flag("yes please")


async def test_orphaned_drill_tasks_are_orphans_and_plain_ones_own_nothing(ownership: TaskOwnership) -> None:
    faults = FaultInjector(limit=50)
    with owned_by(Owner("session:caller")):  # the caller's scope must not leak into the drill
        faults.start(3)
        faults.start(4, orphaned=True)
    try:
        census = take_census(ownership, grace=3600.0)
        assert census.orphaned == 4
        assert census.live == census.closing == 0
        states = {ownership.state_of(t, time.monotonic(), 3600.0) for t in faults._tasks}
        assert states == {OwnerState.UNOWNED, OwnerState.ORPHANED}
    finally:
        assert await faults.stop() == 7
