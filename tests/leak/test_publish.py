from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from media_service.leak.census import Census
from media_service.leak.publish import publish
from media_service.leak.rule import LeakVerdict
from media_service.leak.sampler import Sample
from media_service.metrics import ServiceMetrics


def rendered(metrics: ServiceMetrics) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("owner", "")): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_a_sample_sets_every_leak_gauge() -> None:
    metrics = ServiceMetrics()
    census = Census(live=50, closing=7, orphaned=2, unowned=4, threads=5, session_threads=3)
    verdict = LeakVerdict(
        samples=40, count=census.total, count_max=90, unexplained=census.unexplained, baseline=3, leak=False
    )
    publish(metrics, Sample(census, verdict))
    values = rendered(metrics)
    assert values[("media_goroutine_count", "")] == 68
    assert values[("media_goroutine_count_max", "")] == 90
    assert values[("media_goroutine_unexplained", "")] == 4 + 2 + 5 - 3
    assert values[("media_goroutine_baseline", "")] == 3
    assert values[("media_potential_goroutine_leak", "")] == 0
    # One value per owner state; only orphans are `orphaned`, so any lasting value is a leak.
    assert values[("media_asyncio_tasks", "live")] == 50
    assert values[("media_asyncio_tasks", "closing")] == 7
    assert values[("media_asyncio_tasks", "orphaned")] == 2
    assert values[("media_asyncio_tasks", "unowned")] == 4
    assert values[("media_threads", "")] == 5


def test_no_baseline_yet_is_minus_one_and_a_leak_is_one() -> None:
    metrics = ServiceMetrics()
    census = Census(live=0, closing=0, orphaned=0, unowned=3, threads=1, session_threads=0)
    publish(metrics, Sample(census, LeakVerdict(1, 4, 4, 4, None, False)))
    assert rendered(metrics)[("media_goroutine_baseline", "")] == -1
    publish(metrics, Sample(census, LeakVerdict(31, 4, 4, 4, 1, True)))
    assert rendered(metrics)[("media_potential_goroutine_leak", "")] == 1
