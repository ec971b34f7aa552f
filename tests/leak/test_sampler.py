from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from structlog.testing import capture_logs

from media_service.leak.ownership import TaskOwnership
from media_service.leak.rule import LeakRule
from media_service.leak.sampler import LeakSampler, Sample


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LeakSampler(TaskOwnership(), LeakRule(), interval=0, grace=1.0)


async def test_a_failing_sample_is_logged_and_sampling_goes_on(ownership: TaskOwnership) -> None:
    seen: list[Sample] = []

    def flaky(sample: Sample) -> None:
        seen.append(sample)
        if len(seen) == 1:
            raise RuntimeError("metrics backend hiccup")

    sampler = LeakSampler(ownership, LeakRule(baseline_samples=2), interval=0.01, grace=1.0, on_sample=flaky)
    with capture_logs() as logs:
        task = asyncio.create_task(sampler.run())
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [s.verdict.samples for s in seen[:3]] == [1, 2, 3]
    assert [entry["event"] for entry in logs].count("leak_sample_failed") == 1


async def test_a_verdict_change_is_logged_once_each_way(ownership: TaskOwnership) -> None:
    sampler = LeakSampler(ownership, LeakRule(baseline_samples=1, factor=1), interval=1.0, grace=1.0)
    release = asyncio.Event()
    with capture_logs() as logs:
        sampler.sample()  # baseline: the test's task plus the threads
        extra = [asyncio.create_task(release.wait()) for _ in range(5)]
        await asyncio.sleep(0)
        sampler.sample()
        sampler.sample()
        release.set()
        await asyncio.gather(*extra)
        sampler.sample()
    events = [entry["event"] for entry in logs]
    assert events == ["leak_suspected", "leak_cleared"]
    suspected = logs[0]
    assert suspected["unowned_tasks"] >= 5
    assert suspected["top_task_groups"][0] == "5 unowned asyncio.locks.Event.wait"
