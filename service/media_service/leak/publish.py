"""Put a leak sample on the service's metrics (names fixed by docs/metrics.md)."""

from __future__ import annotations

from media_service.leak.ownership import OwnerState
from media_service.leak.sampler import Sample
from media_service.metrics import ServiceMetrics


def publish(metrics: ServiceMetrics, sample: Sample) -> None:
    census, verdict = sample.census, sample.verdict
    metrics.goroutine_count.set(census.total)
    metrics.goroutine_count_max.set(verdict.count_max)
    metrics.goroutine_unowned.set(census.unexplained)
    metrics.goroutine_baseline.set(-1 if verdict.baseline is None else verdict.baseline)
    metrics.potential_leak.set(1 if verdict.leak else 0)
    # The label set is a contract of three. Tasks still winding down within the grace period are
    # load, reported with the live ones; `closed_session` holds only the orphans, so that any
    # value above zero that lasts is a leak (the MediaServiceOrphanedTasks alert relies on it).
    metrics.asyncio_tasks.labels(owner=OwnerState.LIVE.value).set(census.live + census.closed)
    metrics.asyncio_tasks.labels(owner=OwnerState.CLOSED.value).set(census.orphaned)
    metrics.asyncio_tasks.labels(owner=OwnerState.NONE.value).set(census.unowned)
    metrics.threads.set(census.threads)
