"""The detector end to end on a real loop, real tasks and the service's real metrics registry:
a pod whose load grows is not flagged; a pod that piles up orphans is, and clears again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from media_service.leak.detector import LeakDetector, LeakSettings
from media_service.leak.ownership import Owner, owned_by
from media_service.leak.sampler import Sample
from media_service.metrics import ServiceMetrics

FAST = LeakSettings(sample_interval=0.02, baseline_samples=3, factor=3.0, orphan_grace=0.2)
TASKS_PER_SESSION = 4


def metric(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    """One sample as /metrics renders it; a missing series fails the test."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no series {name}{labels}")


async def poll(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def samples_after(detector: LeakDetector, count: int) -> list[Sample]:
    """The next ``count`` samples the detector takes."""
    seen: list[Sample] = []
    start = detector.sampler.latest.verdict.samples if detector.sampler.latest else 0
    while len(seen) < count:
        latest = detector.sampler.latest
        if latest is not None and latest.verdict.samples > start + len(seen):
            seen.append(latest)
        await asyncio.sleep(0.005)
    return seen


class Sessions:
    """Sessions that each run a few tasks, like a peer connection does."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.tasks: list[asyncio.Task[bool]] = []
        self.owners: list[Owner] = []

    def open(self, count: int) -> list[Owner]:
        new = [Owner(f"session:{len(self.owners) + i}") for i in range(count)]
        for owner in new:
            with owned_by(owner):
                self.tasks += [asyncio.create_task(self.release.wait()) for _ in range(TASKS_PER_SESSION)]
        self.owners += new
        return new

    async def end_all(self) -> None:
        self.release.set()
        await asyncio.gather(*self.tasks)


@pytest.fixture
async def detector(no_task_leak: None) -> AsyncIterator[LeakDetector]:
    async with LeakDetector(FAST, ServiceMetrics()) as started:
        yield started


async def test_metrics_are_published_and_the_baseline_is_set_after_n_samples(detector: LeakDetector) -> None:
    metrics = detector.metrics
    assert metrics is not None
    await poll(lambda: detector.sampler.latest is not None and detector.sampler.latest.verdict.samples >= 3)
    latest = detector.sampler.latest
    assert latest is not None
    assert latest.verdict.baseline is not None and latest.verdict.baseline > 0
    assert metric(metrics, "media_goroutine_baseline") == latest.verdict.baseline
    assert metric(metrics, "media_potential_goroutine_leak") == 0
    assert metric(metrics, "media_goroutine_count") >= metric(metrics, "media_goroutine_unexplained") > 0
    assert metric(metrics, "media_threads") >= 1
    assert metric(metrics, "media_asyncio_tasks", owner="unowned") >= 2  # the test's task and the sampler


async def test_load_growth_is_not_flagged(detector: LeakDetector) -> None:
    """The original rule on the raw count flags this: the baseline was taken at low load."""
    sessions = Sessions()
    try:
        sessions.open(2)
        await poll(lambda: detector.sampler.latest is not None and detector.sampler.latest.verdict.baseline is not None)
        sessions.open(28)  # fifteen times the sessions, fifteen times their tasks
        later = await samples_after(detector, 10)
    finally:
        await sessions.end_all()
    assert all(s.census.live == 30 * TASKS_PER_SESSION for s in later[1:])
    assert all(s.census.total > 3 * (s.verdict.baseline or 0) for s in later[1:])
    assert not any(s.verdict.leak for s in later)
    assert detector.metrics is not None
    assert metric(detector.metrics, "media_potential_goroutine_leak") == 0
    assert metric(detector.metrics, "media_goroutine_count_max") >= 30 * TASKS_PER_SESSION


async def test_sessions_that_close_cleanly_are_not_flagged(detector: LeakDetector) -> None:
    sessions = Sessions()
    await poll(lambda: detector.sampler.latest is not None and detector.sampler.latest.verdict.baseline is not None)
    for owner in sessions.open(20):
        owner.close()
    await sessions.end_all()  # their tasks end well within the grace period
    later = await samples_after(detector, 15)  # well past the grace period
    assert not any(s.verdict.leak for s in later)
    assert later[-1].census.orphaned == 0


async def test_orphans_are_flagged_logged_dumped_and_the_flag_clears(detector: LeakDetector) -> None:
    metrics = detector.metrics
    assert metrics is not None
    sessions = Sessions()
    try:
        sessions.open(5)
        await poll(lambda: detector.sampler.latest is not None and detector.sampler.latest.verdict.baseline is not None)
        with capture_logs() as logs:
            for owner in sessions.owners:
                owner.close()  # closed, but every task stays alive: a leak
            await poll(lambda: metric(metrics, "media_potential_goroutine_leak") == 1)
        orphans = 5 * TASKS_PER_SESSION
        assert metric(metrics, "media_asyncio_tasks", owner="orphaned") == orphans
        assert metric(metrics, "media_asyncio_tasks", owner="live") == 0
        top = detector.dump()["groups"][0]
        assert (top["coroutine"], top["owner"], top["count"]) == ("asyncio.locks.Event.wait", "orphaned", orphans)
        suspected = [entry for entry in logs if entry["event"] == "leak_suspected"]
        assert len(suspected) == 1
        assert suspected[0]["top_task_groups"][0] == f"{orphans} orphaned asyncio.locks.Event.wait"
    finally:
        await sessions.end_all()
    await poll(lambda: metric(metrics, "media_potential_goroutine_leak") == 0)


async def test_a_fire_drill_trips_the_flag_and_ending_it_clears_it(detector: LeakDetector) -> None:
    metrics = detector.metrics
    assert metrics is not None
    await poll(lambda: detector.sampler.latest is not None and detector.sampler.latest.verdict.baseline is not None)
    latest = detector.sampler.latest
    assert latest is not None and latest.verdict.baseline is not None
    with owned_by(Owner("session:drill")):  # injected tasks own nothing even from a session's scope
        detector.faults.start(int(FAST.factor * latest.verdict.baseline) + 1)
    await poll(lambda: metric(metrics, "media_potential_goroutine_leak") == 1)
    assert detector.dump()["groups"][0]["coroutine"] == "media_service.leak.faults.injected_leak"
    assert await detector.faults.stop() == int(FAST.factor * latest.verdict.baseline) + 1
    await poll(lambda: metric(metrics, "media_potential_goroutine_leak") == 0)


async def test_stop_ends_sampler_and_faults_and_restores_the_loop(no_task_leak: None) -> None:
    loop = asyncio.get_running_loop()
    detector = LeakDetector(FAST)
    await detector.start()
    with pytest.raises(RuntimeError):
        await detector.start()
    assert loop.get_task_factory() is not None
    detector.faults.start(10)
    await detector.stop()
    assert loop.get_task_factory() is None
    assert detector.faults.active == 0
