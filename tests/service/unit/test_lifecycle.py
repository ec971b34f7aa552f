"""The lifecycle state machine and the rate limiter: plain state, driven by a fake clock."""

from __future__ import annotations

import pytest

from media_service.lifecycle import Lifecycle, State
from media_service.metrics import ServiceMetrics
from media_service.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauges(metrics: ServiceMetrics) -> tuple[float, float]:
    return metrics.ready._value.get(), metrics.draining._value.get()


def test_starting_ready_draining_stopped() -> None:
    metrics = ServiceMetrics()
    life = Lifecycle(metrics)
    assert (life.state, life.accepting, gauges(metrics)) == (State.STARTING, False, (0, 0))
    assert life.mark_ready() and life.accepting and gauges(metrics) == (1, 0)
    assert life.begin_drain() and life.draining and not life.accepting and gauges(metrics) == (0, 1)
    life.mark_stopped()
    assert (life.state, gauges(metrics)) == (State.STOPPED, (0, 0))


def test_drain_starts_once_and_ready_never_comes_back() -> None:
    life = Lifecycle()
    life.mark_ready()
    assert life.begin_drain() is True
    assert life.begin_drain() is False  # the second signal is the runner's business, not a new drain
    assert life.mark_ready() is False and life.draining


def test_a_drain_before_ready_wins() -> None:
    life = Lifecycle()
    assert life.begin_drain()
    assert life.mark_ready() is False
    assert life.state is State.DRAINING


def test_drain_window_counts_down_from_the_start() -> None:
    clock = Clock()
    life = Lifecycle(clock=clock)
    assert life.drain_remaining(30) == 30
    life.mark_ready()
    life.begin_drain()
    clock.now += 12.5
    assert life.drain_remaining(30) == 17.5
    clock.now += 100
    assert life.drain_remaining(30) == 0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=20, clock=clock)
    assert sum(bucket.take() for _ in range(50)) == 20
    clock.now += 0.5  # five tokens
    assert sum(bucket.take() for _ in range(50)) == 5
    clock.now += 60  # saved tokens are capped at the burst
    assert sum(bucket.take() for _ in range(50)) == 20


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0.5)])
def test_token_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
