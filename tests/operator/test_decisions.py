"""Every rule of the decision logic, and how they interplay."""

from __future__ import annotations

import ast
from pathlib import Path

import media_operator
from media_operator.decisions import Decider
from media_operator.model import (
    BlockReason,
    Budget,
    Delete,
    Evict,
    EvictionResult,
    PodView,
    Quarantine,
    Reading,
    Rules,
    Source,
)

LEAK = Reading(leak=True, sessions=3)
OK = Reading(leak=False, sessions=3)
DOWN = Reading(leak=None, error="connection refused")


def pods(n: int, **quarantined: PodView) -> list[PodView]:
    return [PodView("ns", f"p{i}", ip=f"10.0.0.{i}") for i in range(n)]


def key(i: int) -> tuple[str, str]:
    return ("ns", f"p{i}")


def rules(**kw) -> Rules:
    base = {
        "confirm_seconds": 120,
        "cooldown_seconds": 300,
        "budget": Budget(count=1),
        "storm_fraction": 0.5,
        "evict_after_seconds": 900,
        "delete_grace_seconds": 300,
        "retry_base_seconds": 15,
        "dry_run": False,
    }
    return Rules(**{**base, **kw})


def readings(n: int, leaky: set[int], other: Reading = OK) -> dict:
    return {key(i): LEAK if i in leaky else other for i in range(n)}


def quarantined(name: str, at: float, evict_after: float | None = None) -> PodView:
    return PodView(
        "ns",
        name,
        ip="10.0.1.1",
        quarantined=True,
        quarantined_at=at,
        evict_after=evict_after if evict_after is not None else at + 900,
    )


def test_confirmation_needs_the_gauge_up_for_the_whole_window():
    decider = Decider(rules())
    fleet = pods(4)
    for t in (0, 15, 30, 60, 105):
        d = decider.decide(t, fleet, readings(4, {1}))
        assert d.actions == [] and d.blocked == []
    d = decider.decide(120, fleet, readings(4, {1}))
    assert d.actions == [Quarantine(key(1), Source.SCRAPE, leak_since=0)]
    assert d.leaky == 1 and d.serving == 4 and not d.storm


def test_quarantine_happens_once_per_pod():
    decider = Decider(rules(cooldown_seconds=0, budget=Budget(count=5)))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    assert len(decider.decide(120, fleet, readings(4, {1})).actions) == 1
    # The label is not in the watch yet: the pod must not be quarantined a second time.
    assert decider.decide(135, fleet, readings(4, {1})).actions == []


def test_flapping_gauge_resets_confirmation_and_is_reported():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    decider.decide(60, fleet, readings(4, {1}))
    d = decider.decide(90, fleet, readings(4, set()))
    assert [(b.key, b.reason) for b in d.blocked] == [(key(1), BlockReason.FLAPPING)]
    decider.decide(100, fleet, readings(4, {1}))
    # 120 s after the first 1, but only 20 s after the gauge came back: no action.
    d = decider.decide(120, fleet, readings(4, {1}))
    assert d.actions == [] and d.blocked == []
    assert decider.decide(220, fleet, readings(4, {1})).actions == [Quarantine(key(1), Source.SCRAPE, 100)]


def test_unreadable_metrics_block_and_reset():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    r = readings(4, set())
    r[key(1)] = DOWN
    d = decider.decide(60, fleet, r)
    assert [(b.key, b.reason) for b in d.blocked] == [(key(1), BlockReason.UNREADABLE)]
    assert "connection refused" in d.blocked[0].detail
    decider.decide(61, fleet, readings(4, {1}))
    assert decider.decide(150, fleet, readings(4, {1})).actions == []  # window restarted at 61
    # A pod never seen leaky and unreadable is not a decision at all.
    d = decider.decide(151, fleet, {key(i): DOWN for i in range(4)})
    assert [b.reason for b in d.blocked] == [BlockReason.UNREADABLE]  # only p1 had a leak run


def test_alert_counts_as_confirmed_but_needs_readable_metrics():
    decider = Decider(rules())
    fleet = pods(4)
    decider.alert(key(2), now=10)
    r = readings(4, set())
    r[key(2)] = DOWN
    d = decider.decide(10, fleet, r)
    assert d.actions == [] and [(b.key, b.reason) for b in d.blocked] == [(key(2), BlockReason.UNREADABLE)]
    # The notification is consumed: no action later on its behalf.
    assert decider.decide(20, fleet, readings(4, set())).actions == []
    decider.alert(key(2), now=30)
    d = decider.decide(30, fleet, readings(4, {2}))
    assert d.actions == [Quarantine(key(2), Source.ALERTMANAGER, 30)]


def test_alert_for_a_pod_whose_gauge_reads_0_is_dropped():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {2}))
    decider.alert(key(2), now=30)
    d = decider.decide(30, fleet, readings(4, set()))
    assert d.actions == [] and [(b.key, b.reason) for b in d.blocked] == [(key(2), BlockReason.FLAPPING)]
    decider.alert(key(1), now=40)
    assert decider.decide(40, fleet, readings(4, set())).actions == []
    # Dropped, not kept for later: the gauge coming back starts a fresh confirmation window.
    assert decider.decide(50, fleet, readings(4, {1})).actions == []
    assert decider.decide(169, fleet, readings(4, {1})).actions == []
    assert decider.decide(170, fleet, readings(4, {1})).actions == [Quarantine(key(1), Source.SCRAPE, 50)]


def test_alert_confirms_the_window_from_the_first_leaky_reading():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {3}))
    decider.alert(key(3), now=20)
    assert decider.decide(20, fleet, readings(4, {3})).actions == [Quarantine(key(3), Source.ALERTMANAGER, 0)]


def test_alert_for_a_pod_not_serving_is_dropped():
    decider = Decider(rules())
    fleet = pods(3)
    held = PodView("ns", "p3", ip="10.0.0.3", quarantined=True, quarantined_at=-1000, evict_after=10_000)
    decider.alert(key(3), now=0)
    decider.decide(0, [*fleet, held], readings(4, {3}))
    # Put back into service by hand, still leaky: the old alert must not skip the window.
    back = PodView("ns", "p3", ip="10.0.0.3")
    assert decider.decide(15, [*fleet, back], readings(4, {3})).actions == []
    assert decider.decide(135, [*fleet, back], readings(4, {3})).actions == [Quarantine(key(3), Source.SCRAPE, 15)]


def test_budget_counts_pods_still_in_quarantine_and_blocks_once():
    decider = Decider(rules(storm_fraction=1.0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {0, 1, 2}))
    d = decider.decide(120, fleet, readings(4, {0, 1, 2}))
    assert d.actions == [Quarantine(key(0), Source.SCRAPE, 0)]
    assert sorted((b.key, b.reason) for b in d.blocked) == [(key(1), BlockReason.BUDGET), (key(2), BlockReason.BUDGET)]
    # Next round: same situation, already reported: no second report, no action.
    fleet = [quarantined("p0", 120), *fleet[1:]]
    d = decider.decide(135, fleet, readings(4, {0, 1, 2}))
    assert d.actions == [] and d.blocked == []


def test_a_blocked_pod_that_recovers_is_not_flapping():
    decider = Decider(rules(storm_fraction=1.0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {0, 1}))
    decider.decide(120, fleet, readings(4, {0, 1}))  # p0 quarantined, p1 blocked by the budget
    fleet[0] = quarantined("p0", at=120)
    assert decider.decide(135, fleet, readings(4, set())).blocked == []


def test_budget_frees_when_the_quarantined_pod_is_gone_but_cooldown_holds():
    decider = Decider(rules(storm_fraction=1.0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {0, 1}))
    decider.decide(120, fleet, readings(4, {0, 1}))
    fleet = fleet[1:]  # p0 evicted and gone
    d = decider.decide(200, fleet, {key(i): LEAK if i == 1 else OK for i in range(1, 4)})
    assert [(b.key, b.reason) for b in d.blocked] == [(key(1), BlockReason.COOLDOWN)]
    d = decider.decide(420, fleet, {key(i): LEAK if i == 1 else OK for i in range(1, 4)})
    assert d.actions == [Quarantine(key(1), Source.SCRAPE, 0)]


def test_percentage_budget():
    assert Budget.parse("10%").limit(25) == 2
    assert Budget.parse("10%").limit(5) == 1  # a positive share of a fleet allows one pod
    assert Budget.parse("0%").limit(50) == 0
    assert Budget.parse("3").limit(1) == 3
    decider = Decider(rules(budget=Budget.parse("50%"), storm_fraction=1.0, cooldown_seconds=0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {0, 1, 2}))
    d = decider.decide(120, fleet, readings(4, {0, 1, 2}))
    assert [a.key for a in d.actions] == [key(0), key(1)]
    assert [(b.key, b.reason) for b in d.blocked] == [(key(2), BlockReason.BUDGET)]


def test_cooldown_recovered_from_annotations_after_restart():
    fleet = [quarantined("q", at=1000), *pods(4)]
    decider = Decider(rules(budget=Budget(count=2)))
    r = readings(4, {1}) | {("ns", "q"): OK}
    decider.decide(1000, fleet, r)
    d = decider.decide(1120, fleet, r)
    assert d.actions == [] and [(b.key, b.reason) for b in d.blocked] == [(key(1), BlockReason.COOLDOWN)]
    assert decider.decide(1300, fleet, r).actions == [Quarantine(key(1), Source.SCRAPE, 1000)]


def test_cooldown_read_back_after_restart_outlives_the_quarantined_pod():
    decider = Decider(rules(budget=Budget(count=2)))
    r = readings(4, {1}) | {("ns", "q"): OK}
    decider.decide(1000, [quarantined("q", at=1000), *pods(4)], r)
    d = decider.decide(1120, pods(4), readings(4, {1}))  # the quarantined pod was evicted meanwhile
    assert d.actions == [] and [(b.key, b.reason) for b in d.blocked] == [(key(1), BlockReason.COOLDOWN)]


def test_storm_blocks_every_candidate():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {0, 1}))
    d = decider.decide(120, fleet, readings(4, {0, 1}))
    assert d.storm and d.actions == []
    assert sorted(b.reason for b in d.blocked) == [BlockReason.STORM, BlockReason.STORM]
    # Storm ends when the share drops (one pod recovered): the other one may go now.
    d = decider.decide(135, fleet, readings(4, {1}))
    assert not d.storm and d.actions == [Quarantine(key(1), Source.SCRAPE, 0)]


def test_one_leaky_pod_is_never_a_storm():
    decider = Decider(rules())
    fleet = pods(1)
    decider.decide(0, fleet, readings(1, {0}))
    d = decider.decide(120, fleet, readings(1, {0}))
    assert not d.storm and d.actions == [Quarantine(key(0), Source.SCRAPE, 0)]


def test_storm_counts_only_serving_pods():
    decider = Decider(rules(budget=Budget(count=3)))
    fleet = [quarantined("q1", 0), quarantined("q2", 0), *pods(4)]
    r = readings(4, {1}) | {("ns", "q1"): LEAK, ("ns", "q2"): LEAK}
    decider.decide(500, fleet, r)
    d = decider.decide(620, fleet, r)
    assert not d.storm and d.leaky == 1 and d.actions == [Quarantine(key(1), Source.SCRAPE, 500)]


def test_dry_run_decides_and_changes_nothing():
    decider = Decider(rules(dry_run=True, storm_fraction=1.0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1, 2}))
    d = decider.decide(120, fleet, readings(4, {1, 2}))
    assert d.actions == []
    assert sorted((b.key, b.reason) for b in d.blocked) == [(key(1), BlockReason.DRY_RUN), (key(2), BlockReason.BUDGET)]
    assert decider.decide(135, fleet, readings(4, {1, 2})).blocked == []  # reported once
    # Evictions are decided but not done either.
    fleet = [quarantined("q", at=0), *fleet]
    d = decider.decide(1000, fleet, readings(4, {1, 2}) | {("ns", "q"): OK})
    assert d.actions == [] and (("ns", "q"), BlockReason.DRY_RUN) in [(b.key, b.reason) for b in d.blocked]


def test_eviction_when_sessions_reach_zero():
    decider = Decider(rules())
    pod = quarantined("q", at=0)
    assert decider.decide(10, [pod], {pod.key: Reading(leak=True, sessions=2)}).actions == []
    assert decider.decide(20, [pod], {pod.key: Reading(leak=True, sessions=0)}).actions == [
        Evict(pod.key, "no sessions left")
    ]
    decider.eviction_done(pod.key, 20, EvictionResult.EVICTED)
    assert decider.decide(30, [pod], {pod.key: Reading(leak=True, sessions=0)}).actions == []


def test_quarantined_pod_is_evicted_once_the_watch_shows_the_label():
    decider = Decider(rules())
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    assert decider.decide(120, fleet, readings(4, {1})).actions == [Quarantine(key(1), Source.SCRAPE, 0)]
    zero = readings(4, {1}) | {key(1): Reading(leak=True, sessions=0)}
    assert decider.decide(121, fleet, zero).actions == []  # label not seen yet: nothing, not twice
    fleet[1] = quarantined("p1", at=120)
    assert decider.decide(122, fleet, zero).actions == [Evict(key(1), "no sessions left")]


def test_eviction_at_deadline_even_without_readings():
    decider = Decider(rules())
    pod = quarantined("q", at=0, evict_after=600)
    assert decider.decide(599, [pod], {pod.key: DOWN}).actions == []
    assert decider.decide(600, [pod], {pod.key: DOWN}).actions == [Evict(pod.key, "evict-after deadline passed")]


def test_eviction_refused_is_retried_with_backoff_then_deleted():
    decider = Decider(rules(delete_grace_seconds=300))
    pod = quarantined("q", at=0, evict_after=900)
    zero = {pod.key: Reading(leak=False, sessions=0)}
    times = []
    t = 0.0
    while t < 1300:
        d = decider.decide(t, [pod], zero)
        if d.actions:
            assert len(d.actions) == 1
            times.append((t, type(d.actions[0]).__name__))
            if isinstance(d.actions[0], Delete):
                decider.eviction_done(pod.key, t, EvictionResult.DELETED)
            else:
                decider.eviction_done(pod.key, t, EvictionResult.RETRY)
        t += 5
    evicts = [t for t, kind in times if kind == "Evict"]
    assert evicts[:5] == [0, 15, 45, 105, 225]  # 15, 30, 60, 120 s apart
    assert evicts[5] - evicts[4] == 240 and evicts[6] - evicts[5] == 240  # capped at 16 x base
    assert [t for t, kind in times if kind == "Delete"] == [1200]  # evict-after + grace, once


def test_terminating_and_gone_pods_get_no_action():
    decider = Decider(rules())
    pod = PodView("ns", "q", quarantined=True, quarantined_at=0, evict_after=0, terminating=True)
    assert decider.decide(5000, [pod], {}).actions == []


def test_hand_quarantined_pod_without_annotations_gets_a_deadline_from_first_sight():
    decider = Decider(rules(evict_after_seconds=100))
    pod = PodView("ns", "q", quarantined=True)
    assert decider.decide(50, [pod], {}).actions == []
    assert decider.decide(149, [pod], {}).actions == []
    assert decider.decide(150, [pod], {}).actions == [Evict(pod.key, "evict-after deadline passed")]


def test_failed_quarantine_neither_starts_cooldown_nor_loses_confirmation():
    decider = Decider(rules(storm_fraction=1.0))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    assert decider.decide(120, fleet, readings(4, {1})).actions == [Quarantine(key(1), Source.SCRAPE, 0)]
    decider.quarantine_failed(key(1))
    assert decider.decide(135, fleet, readings(4, {1})).actions == [Quarantine(key(1), Source.SCRAPE, 0)]


def test_failed_quarantine_frees_its_budget_slot_and_cooldown_for_another_pod():
    decider = Decider(rules(storm_fraction=1.0, budget=Budget(count=1), cooldown_seconds=300))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1}))
    decider.decide(60, fleet, readings(4, {1, 2}))
    assert decider.decide(120, fleet, readings(4, {1, 2})).actions == [Quarantine(key(1), Source.SCRAPE, 0)]
    decider.quarantine_failed(key(1))
    # p1 comes first again (oldest leak); once it fails for good, p2 is neither over budget nor cooled down.
    assert decider.decide(135, fleet, readings(4, {1, 2})).actions == [Quarantine(key(1), Source.SCRAPE, 0)]
    decider.quarantine_failed(key(1))
    d = decider.decide(180, fleet, readings(4, {2}))
    assert d.actions == [Quarantine(key(2), Source.SCRAPE, 60)]


def test_cooldown_counts_from_a_quarantine_once_the_watch_shows_it():
    decider = Decider(rules(storm_fraction=1.0, budget=Budget(count=5), cooldown_seconds=300))
    fleet = pods(4)
    decider.decide(0, fleet, readings(4, {1, 2}))
    d = decider.decide(120, fleet, readings(4, {1, 2}))
    assert d.actions == [Quarantine(key(1), Source.SCRAPE, 0)]
    assert [(b.key, b.reason) for b in d.blocked] == [(key(2), BlockReason.COOLDOWN)]
    labelled = [PodView("ns", "p1", ip="10.0.0.1", quarantined=True)] + [p for p in fleet if p.name != "p1"]
    assert decider.decide(135, labelled, readings(4, {1, 2})).actions == []
    assert decider.decide(419, labelled, readings(4, {1, 2})).actions == []
    assert decider.decide(420, labelled, readings(4, {1, 2})).actions == [Quarantine(key(2), Source.SCRAPE, 0)]


def test_one_action_per_pod_per_decision():
    decider = Decider(rules(budget=Budget(count=10), cooldown_seconds=0, storm_fraction=1.0))
    fleet = [*pods(6), quarantined("q", 0, evict_after=0)]
    decider.alert(key(0), 0)
    r = readings(6, {0, 1, 2}) | {("ns", "q"): Reading(leak=True, sessions=0)}
    decider.decide(0, fleet, r)
    decider.alert(key(1), 120)
    d = decider.decide(120, fleet, r)
    keys = [a.key for a in d.actions]
    assert len(keys) == len(set(keys)) and set(keys) == {key(1), key(2), ("ns", "q")}


def _operator_imports(module: str) -> set[str]:
    tree = ast.parse((Path(media_operator.__file__).parent / f"{module}.py").read_text())
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("media_operator")
    }


def test_the_model_imports_nothing_of_the_operator_and_the_logic_only_the_model():
    # The bottom two layers (model, then the decision logic): imports run downwards only.
    assert _operator_imports("model") == set()
    assert _operator_imports("decisions") == {"media_operator.model"}
