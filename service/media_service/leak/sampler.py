"""Sample the task and thread counts every interval and judge them with the leak rule."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from media_common import logs
from media_service.leak.census import Census, take_census
from media_service.leak.ownership import TaskOwnership
from media_service.leak.rule import LeakRule, LeakVerdict
from media_service.leak.taskdump import task_dump

log = logs.get("media_service.leak")


@dataclass(frozen=True, slots=True)
class Sample:
    census: Census
    verdict: LeakVerdict


class LeakSampler:
    def __init__(
        self,
        ownership: TaskOwnership,
        rule: LeakRule,
        *,
        interval: float,
        grace: float,
        on_sample: Callable[[Sample], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.ownership = ownership
        self.rule = rule
        self.interval = interval
        self.grace = grace
        self.on_sample = on_sample
        self.clock = clock
        self.latest: Sample | None = None

    def sample(self) -> Sample:
        """Take one sample on the running loop, judge it, and hand it to ``on_sample``."""
        census = take_census(self.ownership, grace=self.grace, now=self.clock())
        verdict = self.rule.observe(census.total, census.unexplained)
        previous, self.latest = self.latest, Sample(census, verdict)
        if self.on_sample is not None:
            self.on_sample(self.latest)
        if verdict.leak != (previous is not None and previous.verdict.leak):
            self._log_change(self.latest)
        return self.latest

    async def run(self) -> None:
        """Sample forever on a fixed schedule; a slow sample delays the next, never doubles it."""
        next_at = self.clock()
        while True:
            try:
                self.sample()
            except Exception:
                # One bad sample must not end leak detection for the life of the process.
                log.exception("leak_sample_failed")
            next_at += self.interval
            delay = next_at - self.clock()
            if delay < 0:
                next_at, delay = self.clock(), 0.0
            await asyncio.sleep(delay)

    def _log_change(self, sample: Sample) -> None:
        census, verdict = sample.census, sample.verdict
        fields = {
            "count": verdict.count,
            "unexplained": verdict.unexplained,
            "baseline": verdict.baseline,
            "factor": self.rule.factor,
            "orphaned_tasks": census.orphaned,
            "unowned_tasks": census.unowned,
            "threads": census.threads,
        }
        if verdict.leak:
            # The largest groups say where to look before anyone fetches /debug/tasks.
            groups = task_dump(self.ownership, grace=self.grace, now=self.clock(), stack_limit=0)["groups"]
            top = [f"{g['count']} {g['owner']} {g['coroutine']}" for g in groups[:5]]
            log.warning("leak_suspected", top_task_groups=top, **fields)
        else:
            log.info("leak_cleared", **fields)
