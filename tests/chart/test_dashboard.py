"""The Grafana dashboard: valid JSON shipped in a labelled ConfigMap, panels for what the issue
names, and every query valid PromQL over metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.chart import ALL_ON, CHART, one, render
from tests.support.prometheus import OPERATOR_METRICS, require_tool, service_metric_names

DASHBOARD = CHART / "dashboards" / "media-service.json"


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"]]
    return exprs


def test_configmap_carries_the_dashboard_with_the_sidecar_label() -> None:
    configmap = one(render(ALL_ON), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["media-service.json"]) == json.loads(DASHBOARD.read_text())
    assert not [d for d in render() if d["kind"] == "ConfigMap"]


def test_panels_cover_the_issue() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(queries(dashboard))
    for metric in (
        "media_sessions_active",
        "media_goroutine_unexplained",
        "media_goroutine_baseline",
        "media_potential_goroutine_leak",
        "media_draining",
        "media_ws_send_timeouts_total",
        "media_ice_candidates_rejected_total",
        "media_operator_quarantines_total",
        "media_operator_decisions_blocked_total",
        "media_bus_up",
        "media_bus_messages_total",
        "media_whip_forwards_total",
        "media_ice_mux_sessions",
        "media_ice_mux_drops_total",
        "media_ice_mux_receive_buffer_errors_total",
    ):
        assert metric in exprs, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")


def test_every_query_is_valid_promql_over_existing_metrics(tmp_path: Path) -> None:
    exposed = service_metric_names()
    exprs = queries(json.loads(DASHBOARD.read_text()))
    used = {m for e in exprs for m in re.findall(r"\bmedia_[a-z_]+\b", e)}
    assert used - exposed - OPERATOR_METRICS == set()
    # promtool parses each query as a recording rule, with Grafana's variables filled in.
    concrete = [e.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$pod", ".*") for e in exprs]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(concrete)],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
