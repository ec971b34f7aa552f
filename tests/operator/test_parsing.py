"""Plain parts under the HTTP layers: metrics text, task dumps, Alertmanager payloads, labels."""

from __future__ import annotations

import copy

import pytest

from media_common.contract import EVICT_AFTER, POOL_LABEL, QUARANTINED_AT
from media_operator.alerts import AlertTriage, InvalidPayload, parse_notification
from media_operator.labels import (
    parse_rfc3339,
    pod_view,
    quarantine_patch,
    rfc3339,
)
from media_operator.model import Reading
from media_operator.podclient import summarize_tasks
from media_operator.podstore import PodStore
from media_operator.promtext import Unparseable, parse_reading

EXPOSITION = """\
# HELP media_goroutine_count asyncio tasks + threads
# TYPE media_goroutine_count gauge
media_goroutine_count 1042.0
# HELP media_goroutine_baseline baseline
# TYPE media_goroutine_baseline gauge
media_goroutine_baseline 12.0
# HELP media_potential_goroutine_leak 1 = leak suspected
# TYPE media_potential_goroutine_leak gauge
media_potential_goroutine_leak 1.0
# HELP media_asyncio_tasks tasks by owner
# TYPE media_asyncio_tasks gauge
media_asyncio_tasks{owner="unowned"} 1020.0
# HELP media_sessions_active open sessions
# TYPE media_sessions_active gauge
media_sessions_active 4.0
"""


def test_reading_from_exposition():
    reading = parse_reading(EXPOSITION)
    assert reading == Reading(leak=True, sessions=4.0)
    assert reading.figures == {"media_goroutine_count": 1042.0, "media_goroutine_baseline": 12.0}
    assert parse_reading(EXPOSITION.replace("leak 1.0", "leak 0.0")).leak is False


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "missing"),
        ("<html>oops</html>", "missing"),
        ("media_potential_goroutine_leak banana\n", "bad exposition"),
        ("media_potential_goroutine_leak 0.5\n", "expected 0 or 1"),
        ('media_potential_goroutine_leak{x="1" 1\n', "bad exposition"),
    ],
)
def test_unparseable_expositions(text, why):
    with pytest.raises(Unparseable, match=why):
        parse_reading(text)


def test_sessions_are_optional():
    assert parse_reading("media_potential_goroutine_leak 0\n") == Reading(leak=False, sessions=None)


def test_task_summary_names_the_largest_groups():
    dump = {
        "tasks": 1030,
        "groups": [
            {"coroutine": "media_service.leak.faults.injected_leak", "owner": "unowned", "count": 1000},
            {"coroutine": "aiortc.rtcsctptransport._data_channel_flush", "owner": "live", "count": 20},
            {"coroutine": "uvicorn.server.serve", "owner": "unowned", "count": 1},
            {"coroutine": "x", "owner": "unowned", "count": 1},
        ],
    }
    assert summarize_tasks(dump) == (
        "1000× media_service.leak.faults.injected_leak (unowned), "
        "20× aiortc.rtcsctptransport._data_channel_flush (live), "
        "1× uvicorn.server.serve (unowned)"
    )
    assert summarize_tasks({"nothing": 1}) == "task dump has no groups"


@pytest.mark.parametrize("dump", [[{"coroutine": "x", "count": 1}], None, "tasks", 3])
def test_task_summary_of_a_dump_that_is_not_an_object(dump):
    assert summarize_tasks(dump) == "task dump is not a JSON object"


NOTIFICATION = {
    "version": "4",
    "groupKey": '{}:{alertname="MediaServiceGoroutineLeak"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "media-operator",
    "groupLabels": {"alertname": "MediaServiceGoroutineLeak"},
    "commonLabels": {"alertname": "MediaServiceGoroutineLeak"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "MediaServiceGoroutineLeak", "namespace": "media", "pod": "media-0"},
            "annotations": {"summary": "leak"},
            "startsAt": "2026-11-24T01:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": "c0ffee",
        }
    ],
}


def test_triage_accepts_once_and_ignores_the_rest():
    triage = AlertTriage(["MediaServiceGoroutineLeak"])
    in_scope = {("media", "media-0"), ("media", "media-1")}.__contains__
    first = triage.triage(parse_notification(NOTIFICATION), in_scope)
    assert first.accepted == [("media", "media-0")] and first.ignored == []
    again = triage.triage(parse_notification(NOTIFICATION), in_scope)
    assert again.accepted == [] and again.ignored == [("MediaServiceGoroutineLeak media/media-0", "duplicate")]

    payload = copy.deepcopy(NOTIFICATION)
    base = payload["alerts"][0]
    payload["alerts"] = [
        {**base, "startsAt": "2026-11-24T02:00:00Z"},  # the same alert firing anew: not a duplicate
        {**base, "status": "resolved", "fingerprint": "r"},
        {**base, "fingerprint": "o", "labels": {**base["labels"], "alertname": "Other"}},
        {**base, "fingerprint": "s", "labels": {**base["labels"], "pod": "elsewhere"}},
        {**base, "fingerprint": "n", "labels": {"alertname": "MediaServiceGoroutineLeak"}},
    ]
    result = triage.triage(parse_notification(payload), in_scope)
    assert result.accepted == [("media", "media-0")]
    assert [why for _, why in result.ignored] == [
        "resolved",
        "alert name not in the allow-list",
        "pod not in scope",
        "no namespace and pod labels",
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(version="3"), "version"),
        (lambda p: p.pop("alerts"), "alerts must be a list"),
        (lambda p: p.update(status="pending"), "status"),
        (lambda p: p["alerts"][0].update(labels={"a": 1}), r"alerts\[0\].labels"),
        (lambda p: p["alerts"][0].update(startsAt="yesterday"), "startsAt"),
        (lambda p: p["alerts"][0].update(status=None), r"alerts\[0\].status"),
        (lambda p: p.update(alerts=["x"]), r"alerts\[0\] must be an object"),
    ],
)
def test_invalid_payloads(mutate, message):
    payload = copy.deepcopy(NOTIFICATION)
    mutate(payload)
    with pytest.raises(InvalidPayload, match=message):
        parse_notification(payload)
    with pytest.raises(InvalidPayload):
        parse_notification([payload])


def test_label_contract_round_trip():
    patch = quarantine_patch(1_800_000_000, 900, "leak")
    assert patch["metadata"]["labels"] == {POOL_LABEL: "quarantined"}
    ann = patch["metadata"]["annotations"]
    assert ann[QUARANTINED_AT] == "2027-01-15T08:00:00Z" and ann[EVICT_AFTER] == "2027-01-15T08:15:00Z"
    assert parse_rfc3339(rfc3339(1_800_000_000)) == 1_800_000_000
    assert parse_rfc3339("2027-01-15T08:00:00.5+00:00") == 1_800_000_000.5
    assert parse_rfc3339("garbage") is None and parse_rfc3339(None) is None
    body = {
        "metadata": {
            "namespace": "n",
            "name": "p",
            "uid": "u",
            "labels": {POOL_LABEL: "quarantined"},
            "annotations": ann,
            "deletionTimestamp": "2027-01-15T08:00:00Z",
        },
        "status": {"podIP": "10.1.2.3"},
    }
    view = pod_view(body)
    assert (view.quarantined, view.quarantined_at, view.evict_after, view.terminating, view.ip) == (
        True,
        1_800_000_000,
        1_800_000_900,
        True,
        "10.1.2.3",
    )


def test_store_follows_the_selector():
    store = PodStore({"app": "media"})
    pod = {"metadata": {"namespace": "n", "name": "p", "labels": {"app": "media"}}}
    store.apply(None, pod)
    assert [p.name for p in store.snapshot()] == ["p"]
    store.apply("MODIFIED", {"metadata": {"namespace": "n", "name": "p", "labels": {"app": "other"}}})
    assert len(store) == 0
    store.apply("ADDED", pod)
    store.apply("DELETED", pod)
    assert len(store) == 0
