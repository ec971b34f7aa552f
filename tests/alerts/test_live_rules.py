"""The rules of alerts/ in a real Prometheus (fast variant), sending to a real Alertmanager.

The scrape target here is a static text endpoint; the end-to-end test with the real service and
operator uses the same fixtures.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.alertmanager import WebhookReceiver, alertmanager_server, example_config
from tests.support.prometheus import MetricsTarget, fast_rules, prometheus_server, static_job, wait_until

LEAKING = """\
media_potential_goroutine_leak 1
media_goroutine_unexplained 75
media_goroutine_baseline 25
media_ready 1
media_draining 0
"""
HEALTHY = LEAKING.replace("leak 1", "leak 0").replace("unexplained 75", "unexplained 25")


def scrape_job(target: MetricsTarget) -> dict:
    # The labels the chart's ServiceMonitor gives a media pod's series.
    return static_job("media-service", target.address, {"namespace": "media", "pod": "media-a"})


def test_prometheus_scrapes_and_evaluates_the_fast_rules(tmp_path: Path) -> None:
    with (
        MetricsTarget(HEALTHY) as target,
        prometheus_server(
            tmp_path / "prom",
            scrape_configs=[scrape_job(target)],
            rule_paths=fast_rules(tmp_path / "rules"),
        ) as prom,
    ):
        up = prom.wait_for_query('up{job="media-service"}', lambda r: bool(r) and r[0]["value"][1] == "1")
        assert up[0]["metric"]["pod"] == "media-a"
        groups = {g["name"] for g in prom.rule_groups()}
        assert groups == {"media-service", "media-operator"}
        # No operator target at all: its absence alert fires with the shortened `for`.
        prom.wait_for_alert("MediaOperatorDown")
        assert prom.alerts("MediaServiceGoroutineLeak") == []

        target.text = LEAKING
        (leak,) = prom.wait_for_alert("MediaServiceGoroutineLeak")
        assert leak["labels"] == {
            "alertname": "MediaServiceGoroutineLeak",
            "severity": "warning",
            "job": "media-service",
            "instance": target.address,
            "namespace": "media",
            "pod": "media-a",
        }
        description = " ".join(leak["annotations"]["description"].split())
        assert "5 minutes: 75 unexplained tasks and threads against a baseline of 25." in description

        target.text = HEALTHY
        wait_until(lambda: prom.alerts("MediaServiceGoroutineLeak") == [], 30, "the leak alert to resolve")


def test_prometheus_alert_reaches_the_webhook_through_alertmanager(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken")
    with (
        WebhookReceiver() as webhook,
        alertmanager_server(tmp_path / "am", example_config(webhook.url, token_file)) as am,
        MetricsTarget(LEAKING) as target,
        prometheus_server(
            tmp_path / "prom",
            scrape_configs=[scrape_job(target)],
            rule_paths=fast_rules(tmp_path / "rules"),
            alertmanager_urls=[am.url],
        ),
    ):
        firing = webhook.wait_for(lambda n: n.body["status"] == "firing", timeout=60)
        assert firing.headers["authorization"] == "Bearer t0ken"
        assert firing.body["groupLabels"] == {
            "alertname": "MediaServiceGoroutineLeak",
            "namespace": "media",
            "pod": "media-a",
        }
        assert firing.body["alerts"][0]["annotations"]["runbook_url"].endswith("/MediaServiceGoroutineLeak.md")

        target.text = HEALTHY
        resolved = webhook.wait_for(lambda n: n.body["status"] == "resolved", timeout=60)
        assert resolved.body["groupLabels"]["pod"] == "media-a"
