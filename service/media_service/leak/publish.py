"""Put a leak sample on the service's metrics (names fixed by docs/metrics.md)."""

from __future__ import annotations

from media_service.leak.ownership import OwnerState
from media_service.leak.sampler import Sample
from media_service.metrics import ServiceMetrics


def publish(metrics: ServiceMetrics, sample: Sample) -> None:
    census, verdict = sample.census, sample.verdict
    metrics.goroutine_count.set(census.total)
    metrics.goroutine_count_max.set(verdict.count_max)
    metrics.goroutine_unexplained.set(census.unexplained)
    metrics.goroutine_baseline.set(-1 if verdict.baseline is None else verdict.baseline)
    metrics.potential_leak.set(1 if verdict.leak else 0)
    # One label value per owner state, the names /debug/tasks uses: `orphaned` holds only orphans,
    # so any value above zero that lasts is a leak (the MediaServiceOrphanedTasks alert relies on it).
    counts = {
        OwnerState.LIVE: census.live,
        OwnerState.CLOSING: census.closing,
        OwnerState.ORPHANED: census.orphaned,
        OwnerState.UNOWNED: census.unowned,
    }
    for state, count in counts.items():
        metrics.asyncio_tasks.labels(owner=state.value).set(count)
    metrics.threads.set(census.threads)
