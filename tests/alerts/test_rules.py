"""The alert rules of alerts/: valid for promtool, unit-tested for every alert, documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.prometheus import (
    ALERTS_DIR,
    OPERATOR_METRICS,
    REPO,
    alert_rules,
    all_rules,
    fast_rules,
    require_tool,
    rule_files,
    service_metric_names,
)

RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/media-service/media-service/blob/main/docs/runbooks/"
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.test.yaml"))

# What the issue asks for, by alert name; each must exist.
REQUIRED_ALERTS = {
    "MediaServiceGoroutineLeak",
    "MediaServiceTaskGrowth",
    "MediaServiceOrphanedTasks",
    "MediaServiceDrainStuck",
    "MediaServiceNotReady",
    "MediaServiceSlowClientsDropped",
    "MediaServiceIceCandidateFlood",
    "MediaServiceTargetDown",
    "MediaServiceTargetAbsent",
    "MediaServiceFileDescriptorGrowth",
    "MediaServiceFileDescriptorsNearLimit",
    "MediaServiceMemoryGrowth",
    "MediaServiceBusDown",
    "MediaServiceIcePortOverflow",
    "MediaOperatorDown",
    "MediaOperatorQuarantineBlocked",
    "MediaOperatorScrapeFailures",
}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def test_rule_files_exist_and_cover_the_issue() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_promtool_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests pin the rules: a leak alert that waits 1m instead of 5m must fail them."""
    shutil.copytree(ALERTS_DIR, tmp_path / "alerts")
    rules = tmp_path / "alerts" / "media-service.rules.yaml"
    text = rules.read_text()
    changed = text.replace(
        "expr: media_potential_goroutine_leak == 1\n        for: 5m",
        "expr: media_potential_goroutine_leak == 1\n        for: 1m",
    )
    assert changed != text
    rules.write_text(changed)
    result = promtool("test", "rules", "tests/media-service.test.yaml", cwd=tmp_path / "alerts")
    assert result.returncode != 0
    assert "MediaServiceGoroutineLeak" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), f"no test where these fire: {names - firing}"
    assert names - silent == set(), f"no test where these stay silent: {names - silent}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_alert_carries_severity_summary_description_runbook(rule: dict) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{rule['alert']}.md"
    runbook = RUNBOOKS / f"{rule['alert']}.md"
    assert runbook.is_file(), runbook
    text = runbook.read_text()
    assert text.startswith(f"# {rule['alert']}\n")
    assert "## What it means" in text and "## What to do" in text


def test_no_runbook_without_an_alert() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == names


def test_leak_alert_is_the_contract() -> None:
    """The operator acts on this alert by name; its condition, delay and severity are fixed."""
    (leak,) = [r for r in alert_rules() if r["alert"] == "MediaServiceGoroutineLeak"]
    assert leak["expr"].strip() == "media_potential_goroutine_leak == 1"
    assert leak["for"] == "5m"
    assert leak["labels"]["severity"] == "warning"


def test_rules_use_only_metrics_that_exist() -> None:
    """Every media_* name in an expression is one the service exposes or the operator's contract."""
    exposed = service_metric_names()
    assert {"media_potential_goroutine_leak", "media_sessions_rejected_total"} <= exposed
    # Label matchers ({media_service_pool!="quarantined"}) name labels, not metrics.
    used = {
        name
        for rule in all_rules()
        for name in re.findall(r"\bmedia_[a-z_]+\b", re.sub(r"\{[^}]*\}", "{}", rule["expr"]))
    }
    unknown = used - exposed - OPERATOR_METRICS
    assert unknown == set(), f"rules read metrics nobody exposes: {unknown}"
    assert "media_potential_goroutine_leak" in used


def test_process_metrics_are_read_by_job() -> None:
    """process_* series come from client_python's ProcessCollector, which the operator (and most
    other programs Prometheus scrapes) exports too: a rule reading one must select its job."""
    readers = 0
    for rule in all_rules():
        selectors = re.findall(r"\b(process_[a-z_]+)(\{[^}]*\})?", rule["expr"])
        for name, labels in selectors:
            assert re.search(r'\bjob="media-(service|operator)"', labels), (rule.get("alert"), name)
        readers += bool(selectors)
    assert readers >= 3


def test_fast_variant_keeps_expressions_and_shortens_waits(tmp_path: Path) -> None:
    written = fast_rules(tmp_path, for_="2s", interval="1s")
    assert [p.name for p in written] == [p.name for p in rule_files()]
    for src, dst in zip(rule_files(), written, strict=False):
        original = yaml.safe_load(src.read_text())["groups"]
        fast = yaml.safe_load(dst.read_text())["groups"]
        assert [g["name"] for g in fast] == [g["name"] for g in original]
        for group_o, group_f in zip(original, fast, strict=False):
            assert group_f["interval"] == "1s"
            for rule_o, rule_f in zip(group_o["rules"], group_f["rules"], strict=False):
                assert rule_f["expr"] == rule_o["expr"]
                assert rule_f.get("annotations") == rule_o.get("annotations")
                assert rule_f.get("labels") == rule_o.get("labels")
                assert rule_f.get("for") == ("2s" if "for" in rule_o else None)
    result = promtool("check", "rules", *map(str, written))
    assert result.returncode == 0, result.stdout + result.stderr
