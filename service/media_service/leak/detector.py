"""The leak detector of one app instance: ownership, sampler, metrics and fault injection together.

Framework glue calls ``start()`` from the app's startup on the serving loop and ``stop()`` from
its shutdown; everything else is plain objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any

from media_service.leak.faults import MAX_INJECTED_TASKS, FaultInjector
from media_service.leak.ownership import TaskOwnership
from media_service.leak.publish import publish
from media_service.leak.rule import LeakRule
from media_service.leak.sampler import LeakSampler, Sample
from media_service.leak.taskdump import task_dump
from media_service.metrics import ServiceMetrics


@dataclass(frozen=True, slots=True)
class LeakSettings:
    """Mirrors MEDIA_LEAK_SAMPLE_INTERVAL, MEDIA_LEAK_BASELINE_SAMPLES, MEDIA_LEAK_FACTOR and
    MEDIA_LEAK_ORPHAN_GRACE."""

    sample_interval: float = 10.0
    baseline_samples: int = 30
    factor: float = 3.0
    orphan_grace: float = 30.0


class LeakDetector:
    def __init__(
        self,
        settings: LeakSettings,
        metrics: ServiceMetrics | None = None,
        *,
        fault_limit: int = MAX_INJECTED_TASKS,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ownership = TaskOwnership()
        self.sampler = LeakSampler(
            self.ownership,
            LeakRule(settings.baseline_samples, settings.factor),
            interval=settings.sample_interval,
            grace=settings.orphan_grace,
            on_sample=self._publish,
        )
        self.faults = FaultInjector(fault_limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Own tasks created on the running loop from now on, and start sampling."""
        if self._task is not None:
            raise RuntimeError("leak detector already started")
        self._loop = asyncio.get_running_loop()
        self.ownership.install(self._loop)
        # The sampler belongs to no session, whoever starts the detector.
        self._task = self._loop.create_task(self.sampler.run(), name="leak-sampler", context=contextvars.Context())

    async def stop(self) -> None:
        """Stop sampling, end injected faults and take the task factory off the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.faults.stop()
        if self._loop is not None:
            self.ownership.uninstall(self._loop)
            self._loop = None

    async def __aenter__(self) -> LeakDetector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def dump(self, *, identities: bool = False) -> dict[str, Any]:
        """The ``/debug/tasks`` document, for the running loop; session and user names only if asked."""
        return task_dump(self.ownership, grace=self.settings.orphan_grace, identities=identities)

    def _publish(self, sample: Sample) -> None:
        if self.metrics is not None:
            publish(self.metrics, sample)
