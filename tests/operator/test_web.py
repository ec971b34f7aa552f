"""The operator's HTTP server on its own: metric names (a contract with the alert rules), health."""

from __future__ import annotations

import time

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from media_operator.alerts import AlertTriage
from media_operator.app import build_registry, kopf_settings
from media_operator.controller import Controller, RoundStats
from media_operator.decisions import Decider
from media_operator.metrics import OperatorMetrics
from media_operator.podclient import PodClient
from media_operator.podstore import PodStore
from media_operator.settings import Settings
from media_operator.web import build_app

CONTRACT = {
    ("media_operator_pods_watched", ()),
    ("media_operator_storm", ()),
    *{("media_operator_scrapes_total", (("result", r),)) for r in ("ok", "error", "unparseable")},
    *{("media_operator_quarantines_total", (("source", s),)) for s in ("scrape", "alertmanager")},
    *{
        ("media_operator_decisions_blocked_total", (("reason", r),))
        for r in ("budget", "storm", "cooldown", "dry_run", "unreadable", "flapping")
    },
    *{("media_operator_evictions_total", (("result", r),)) for r in ("evicted", "retry", "deleted", "error")},
}


async def serve(token: str | None = None) -> tuple[TestClient, Controller]:
    settings = Settings(scrape_interval=1, scrape_timeout=1)
    store = PodStore(settings.selector)
    controller = Controller(
        settings,
        store,
        Decider(settings.rules()),
        PodClient(9090, timeout=1, concurrency=1),
        kube=None,
        metrics=OperatorMetrics(),
    )  # type: ignore[arg-type]  # never called here
    app = build_app(controller, AlertTriage(settings.alert_names), token, lambda key: False)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, controller


async def test_metrics_carry_every_contract_name_from_the_start():
    client, _ = await serve()
    try:
        response = await client.get("/metrics")
        assert response.status == 200 and response.content_type == "text/plain"
        samples = {
            (s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(await response.text())
            for s in f.samples
        }
        assert samples >= CONTRACT, sorted(CONTRACT - samples)
        assert (await client.post("/alertmanager", json={})).status == 404  # no token: off
    finally:
        await client.close()


async def test_healthz_fails_when_rounds_stop():
    client, controller = await serve(token="t")
    try:
        assert (await client.get("/healthz")).status == 200
        controller.last_round = RoundStats(finished_at=time.monotonic() - 3600)
        response = await client.get("/healthz")
        assert response.status == 503 and (await response.json()) == {"status": "control loop stalled"}
        assert (await client.post("/alertmanager", json={})).status == 401
    finally:
        await client.close()


async def test_webhook_answers_503_until_the_pod_list_is_complete():
    client, controller = await serve(token="t")
    try:
        auth = {"Authorization": "Bearer t"}
        assert (await client.post("/alertmanager", json={})).status == 401
        response = await client.post("/alertmanager", json={}, headers=auth)
        assert response.status == 503 and response.headers["Retry-After"] == "1"  # Alertmanager retries
        assert (await response.json()) == {"error": "starting: the pod list is not complete yet"}
        controller.listed.set()
        assert (await client.post("/alertmanager", json={}, headers=auth)).status == 400  # judged now
    finally:
        await client.close()


def test_kopf_layer_builds_without_warnings():
    """Settings and handlers kopf is given: deprecated knobs would warn (errors under -W error)."""
    settings = kopf_settings()
    assert settings.scanning.disabled and not settings.posting.enabled
    store = PodStore({"app": "media"})
    registry = build_registry(store)
    assert registry is not None
