from __future__ import annotations

import pytest

from media_service.leak.rule import LeakRule


def test_baseline_is_the_nth_sample_and_no_leak_before_it() -> None:
    rule = LeakRule(baseline_samples=3, factor=3)
    first = rule.observe(count=100, unexplained=100)
    second = rule.observe(count=50, unexplained=50)
    assert (first.baseline, first.leak, second.baseline, second.leak) == (None, False, None, False)
    third = rule.observe(count=20, unexplained=10)
    assert third.baseline == 10
    assert third.samples == 3
    assert not third.leak


def test_leak_only_strictly_above_factor_times_baseline_and_it_clears() -> None:
    rule = LeakRule(baseline_samples=1, factor=3)
    rule.observe(10, 10)
    assert not rule.observe(30, 30).leak  # equal to 3 x baseline is not above it
    assert rule.observe(31, 31).leak
    assert not rule.observe(12, 12).leak


def test_the_unexplained_count_is_judged_not_the_raw_count() -> None:
    rule = LeakRule(baseline_samples=1, factor=3)
    rule.observe(count=40, unexplained=10)
    # Load tripled the raw count (session tasks), the unexplained count did not move.
    steady = rule.observe(count=400, unexplained=11)
    assert not steady.leak
    assert steady.count_max == 400


def test_max_is_the_highest_raw_count() -> None:
    rule = LeakRule(baseline_samples=30)
    counts = [5, 9, 7, 3]
    assert [rule.observe(c, c).count_max for c in counts] == [5, 9, 9, 9]


def test_a_zero_baseline_never_flags() -> None:
    rule = LeakRule(baseline_samples=1, factor=3)
    rule.observe(0, 0)
    assert not rule.observe(1000, 1000).leak


def test_the_baseline_is_fixed_once_taken() -> None:
    rule = LeakRule(baseline_samples=2, factor=2)
    rule.observe(1, 1)
    rule.observe(5, 5)
    later = [rule.observe(c, c) for c in (1, 100, 1)]
    assert [v.baseline for v in later] == [5, 5, 5]
    assert [v.leak for v in later] == [False, True, False]


@pytest.mark.parametrize(("samples", "factor"), [(0, 3), (1, 0.5)])
def test_invalid_parameters_are_refused(samples: int, factor: float) -> None:
    with pytest.raises(ValueError):
        LeakRule(samples, factor)
