"""alerts/alertmanager.example.yaml: valid for amtool, routes the leak alert to the operator's
webhook (bearer token, resolved notifications, one group per pod) and everything to people."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.alertmanager import (
    EXAMPLE_CONFIG as EXAMPLE,
)
from tests.support.alertmanager import (
    WebhookReceiver,
    alert,
    alertmanager_server,
    amtool,
    example_config,
    route_receivers,
)
from tests.support.prometheus import alert_rules

LEAK = "MediaServiceGoroutineLeak"


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_routes(rule: dict) -> None:
    labels = {
        "alertname": rule["alert"],
        "severity": rule["labels"]["severity"],
        "namespace": "media",
        "pod": "media-a",
    }
    expected = ["media-operator", "default"] if rule["alert"] == LEAK else ["default"]
    assert route_receivers(EXAMPLE, labels) == expected


def test_operator_receiver_contract() -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    (leak_route,) = [r for r in config["route"]["routes"] if r["receiver"] == "media-operator"]
    assert leak_route["group_by"] == ["alertname", "namespace", "pod"]
    (receiver,) = [r for r in config["receivers"] if r["name"] == "media-operator"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["send_resolved"] is True
    assert webhook["url"].endswith("/alertmanager")
    auth = webhook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"]


def test_live_alertmanager_notifies_the_operator_webhook(tmp_path: Path) -> None:
    """A real Alertmanager with the example routing: the leak alert reaches the webhook with the
    bearer token and per-pod grouping, and so does its resolution; other alerts never do."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    leak_labels = {"alertname": LEAK, "severity": "warning", "namespace": "media", "pod": "media-a"}
    other_labels = {
        "alertname": "MediaServiceDrainStuck",
        "severity": "warning",
        "namespace": "media",
        "pod": "media-b",
    }
    with (
        WebhookReceiver() as webhook,
        alertmanager_server(tmp_path / "am", example_config(webhook.url, token_file)) as am,
    ):
        am.post_alerts([alert(other_labels), alert(leak_labels)])
        firing = webhook.wait_for(lambda n: n.body.get("status") == "firing")
        assert firing.headers["authorization"] == "Bearer s3cret-token"
        assert firing.body["receiver"] == "media-operator"
        assert firing.body["groupLabels"] == {"alertname": LEAK, "namespace": "media", "pod": "media-a"}
        assert [a["labels"]["pod"] for a in firing.body["alerts"]] == ["media-a"]

        # amtool sees both alerts in the server: the other one was received, just not routed here.
        query = am.amtool("alert", "query", "-o", "simple")
        assert query.returncode == 0, query.stderr
        assert LEAK in query.stdout and "MediaServiceDrainStuck" in query.stdout

        am.post_alerts([alert(leak_labels, resolved=True)])
        resolved = webhook.wait_for(lambda n: n.body.get("status") == "resolved")
        assert resolved.body["alerts"][0]["labels"]["pod"] == "media-a"
        assert resolved.body["alerts"][0]["status"] == "resolved"

    bodies = [n.body for n in webhook.notifications]
    assert all(a["labels"]["alertname"] == LEAK for b in bodies for a in b["alerts"]), bodies
