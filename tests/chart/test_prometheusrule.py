"""The chart's PrometheusRule is alerts/ itself: same groups, valid for promtool, shipped by
content when the chart is packaged (helm follows the symlink), with nothing else of alerts/."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import yaml

from tests.chart.render import ALL_ON, CHART, helm, one, render
from tests.support.prometheus import require_tool, rule_files


def source_groups() -> list[dict]:
    return [group for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]]


def test_chart_ships_alerts_through_a_symlink() -> None:
    link = CHART / "alerts"
    assert link.is_symlink()
    assert link.resolve() == (CHART.parent.parent / "alerts").resolve()


def test_rendered_rule_equals_alerts_dir() -> None:
    rule = one(render(ALL_ON), "PrometheusRule")
    assert rule["spec"]["groups"] == source_groups()


def test_rendered_rule_passes_promtool(tmp_path: Path) -> None:
    rule = one(render(ALL_ON), "PrometheusRule")
    path = tmp_path / "rendered.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([require_tool("promtool"), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
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
    text = helm("template", "media", str(unpacked / "media-service"), "--namespace", "media",
                "--set", "alerts.enabled=true").stdout
    rule = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == source_groups()
    assert not any(os.path.islink(p) for p in (unpacked / "media-service").rglob("*"))
