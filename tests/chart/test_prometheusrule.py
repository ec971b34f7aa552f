"""The chart's PrometheusRule is alerts/ itself: same groups, valid for promtool, shipped by
content when the chart is packaged (helm follows the symlink), with nothing else of alerts/.
Without a scraped operator it is alerts/ less the operator's rule file."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.support.chart import ALL_ON, CHART, helm, load_all, objects, one, render
from tests.support.prometheus import require_tool, rule_files

OPERATOR_RULES = "media-operator.rules.yaml"


def source_groups(*, operator: bool = True) -> list[dict]:
    """The groups of alerts/, in file order; without the operator's file when no operator is scraped."""
    return [
        group
        for path in rule_files()
        if operator or path.name != OPERATOR_RULES
        for group in yaml.safe_load(path.read_text())["groups"]
    ]


def alert_names(groups: list[dict]) -> set[str]:
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_chart_ships_alerts_through_a_symlink() -> None:
    link = CHART / "alerts"
    assert link.is_symlink()
    assert link.resolve() == (CHART.parent.parent / "alerts").resolve()


def test_rendered_rule_equals_alerts_dir() -> None:
    rule = one(render(ALL_ON), "PrometheusRule")
    assert rule["spec"]["groups"] == source_groups()


def test_default_install_carries_the_operator_rules() -> None:
    """Defaults on a cluster with the prometheus-operator API: operator, its ServiceMonitor and its rules."""
    docs = render(None, "--api-versions", "monitoring.coreos.com/v1")
    one(docs, "ServiceMonitor", "operator")
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == source_groups()
    assert {"MediaOperatorDown", "MediaOperatorQuarantineBlocked"} <= alert_names(rule["spec"]["groups"])


@pytest.mark.parametrize(
    "operator",
    [
        {"enabled": False},
        {"enabled": False, "serviceMonitor": {"enabled": True}},
        {"serviceMonitor": {"enabled": False}},
    ],
    ids=["operator-disabled", "operator-disabled-monitor-on", "operator-not-scraped"],
)
def test_no_operator_rules_without_a_scraped_operator(operator: dict) -> None:
    """MediaOperatorDown would fire forever for an operator the chart neither installs nor scrapes."""
    docs = render({"alerts": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}, "operator": operator})
    assert [
        d
        for d in objects(docs, "ServiceMonitor")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ] == []
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    assert groups == source_groups(operator=False)
    names = alert_names(groups)
    assert not {n for n in names if n.startswith("MediaOperator")}, names
    assert "MediaServiceGoroutineLeak" in names


def test_rendered_rule_passes_promtool(tmp_path: Path) -> None:
    rule = one(render(ALL_ON), "PrometheusRule")
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in source_groups())
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_packaged_chart_carries_the_rule_files_not_the_link(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("media-service-*.tgz")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        alerts = sorted(n for n in members if n.startswith("media-service/alerts/"))
        assert alerts == [f"media-service/alerts/{p.name}" for p in rule_files()]
        for path in rule_files():
            member = members[f"media-service/alerts/{path.name}"]
            assert member.isfile()
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == path.read_bytes()
    # The packaged chart renders the same rule as the working tree.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    text = helm(
        "template",
        "media",
        str(unpacked / "media-service"),
        "--namespace",
        "media",
        "--set",
        "alerts.enabled=true",
        "--set",
        "operator.serviceMonitor.enabled=true",
    ).stdout
    rule = next(d for d in load_all(text) if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == source_groups()
    assert not any(os.path.islink(p) for p in (unpacked / "media-service").rglob("*"))


def test_servicemonitor_carries_the_pool_the_drain_rule_reads() -> None:
    """MediaServiceDrainStuck leaves out quarantined pods by the series label media_service_pool:
    the media ServiceMonitor copies the pod's pool label, as Prometheus Operator names it
    (every character outside [a-zA-Z0-9_] becomes "_")."""
    docs = render(ALL_ON)
    monitor = one(docs, "ServiceMonitor", "media")
    pool = "media-service/pool"
    pod_labels = one(docs, "Deployment", "media")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[pool] == "serving"
    assert monitor["spec"]["podTargetLabels"] == [pool]
    series_label = re.sub(r"[^a-zA-Z0-9_]", "_", pool)
    assert series_label == "media_service_pool"
    (drain,) = [
        r
        for g in one(docs, "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "MediaServiceDrainStuck"
    ]
    assert f'{series_label}!="quarantined"' in drain["expr"]
