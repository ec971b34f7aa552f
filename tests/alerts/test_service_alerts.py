"""The alerting path from the real service to the webhook Alertmanager calls: the media service
(fire drill on, fast leak sampling) scraped by a real Prometheus with the fast variant of
alerts/, routed by a real Alertmanager with the example configuration. The operator's webhook is
a recording receiver here; the operator's own end-to-end test puts the operator in its place."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.alertmanager import WebhookReceiver, alertmanager_server, example_config
from tests.support.media_process import FAST_LEAK_ENV, media_service
from tests.support.prometheus import fast_rules, prometheus_server, static_job, wait_until

LEAK = "MediaServiceGoroutineLeak"
POD = {"namespace": "media", "pod": "media-drill"}


def test_injected_leak_reaches_the_webhook_and_its_end_resolves(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("drill-token")
    with (
        media_service(tmp_path, host="127.0.0.3", env={**FAST_LEAK_ENV, "MEDIA_FAULT_INJECTION": "1"}) as media,
        WebhookReceiver() as webhook,
        alertmanager_server(tmp_path / "am", example_config(webhook.url, token_file)) as am,
        prometheus_server(
            tmp_path / "prom",
            scrape_configs=[static_job("media-service", f"{media.host}:{media.admin_port}", POD)],
            rule_paths=fast_rules(tmp_path / "rules"),
            alertmanager_urls=[am.url],
        ) as prom,
        httpx.Client(base_url=media.admin_url, timeout=10) as admin,
    ):
        baseline = media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        prom.wait_for_query(
            'media_goroutine_baseline{job="media-service"}', lambda r: bool(r) and float(r[0]["value"][1]) > 0
        )
        # A healthy, ready service raises none of its alerts (TargetAbsent, from before the first
        # scrape, resolves at the next evaluation).
        wait_until(
            lambda: not [a for a in prom.alerts() if a["labels"]["alertname"].startswith("MediaService")],
            30,
            "no MediaService alert active",
        )

        leaked = int(3 * baseline) + 1
        assert admin.post("/debug/leak", params={"tasks": str(leaked)}).status_code == 200
        firing = webhook.wait_for(lambda n: n.body["status"] == "firing", timeout=60)
        assert firing.headers["authorization"] == "Bearer drill-token"
        assert firing.body["groupLabels"] == {"alertname": LEAK, **POD}
        (alert,) = firing.body["alerts"]
        description = " ".join(alert["annotations"]["description"].split())
        assert f"against a baseline of {baseline:.0f}." in description
        unexplained = int(description.split("for 5 minutes: ")[1].split(" ")[0])
        assert unexplained > 3 * baseline

        assert admin.delete("/debug/leak").json()["stopped"] == leaked
        resolved = webhook.wait_for(lambda n: n.body["status"] == "resolved", timeout=60)
        assert resolved.body["groupLabels"] == {"alertname": LEAK, **POD}
    assert {a["labels"]["alertname"] for n in webhook.notifications for a in n.body["alerts"]} == {LEAK}
