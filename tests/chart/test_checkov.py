"""checkov on the rendered manifests: no failed check, and every skipped check is listed with its
reason in the chart README."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import ALL_ON, CHART, template
from tests.support.tools import require_tool

SKIPS_BEGIN = "<!-- checkov-skips:begin -->"
SKIPS_END = "<!-- checkov-skips:end -->"


def checkov() -> str:
    return require_tool("checkov")


def readme_skips() -> dict[str, str]:
    """check id -> scope, from the README's table."""
    section = (CHART / "README.md").read_text().split(SKIPS_BEGIN, 1)[1].split(SKIPS_END, 1)[0]
    rows = re.findall(r"^\| (CKV2?_K8S_\d+) \| ([^|]+) \| ([^|]+) \|$", section, re.M)
    assert rows, "no checkov skips table in the README"
    assert all(reason.strip() for _, _, reason in rows)
    return {check: scope.strip() for check, scope, _ in rows}


def scan(manifests: str, tmp_path: Path, skip: list[str]) -> dict[str, Any]:
    (tmp_path / "rendered.yaml").write_text(manifests)
    result = subprocess.run(
        [
            checkov(),
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--compact",
            *(["--skip-check", ",".join(skip)] if skip else []),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout)
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "kubernetes"]
    return report


@pytest.mark.slow
@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_no_failed_checkov_check(values: dict[str, Any] | None, tmp_path: Path) -> None:
    skips = readme_skips()
    chart_wide = [check for check, scope in skips.items() if scope == "chart-wide"]
    report = scan(template(values).stdout, tmp_path, chart_wide)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 100
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped - set(skips) == set(), (
        f"skipped in the manifests but not listed in the README: {skipped - set(skips)}"
    )
    if values is ALL_ON:
        # Every resource-level skip the README lists is really in the manifests (none stale).
        assert skipped == set(skips) - set(chart_wide)


@pytest.mark.slow
def test_checkov_fails_an_insecure_change(tmp_path: Path) -> None:
    """The scan can fail: a privileged, root container is reported."""
    insecure = {
        "securityContext": {
            "privileged": True,
            "runAsNonRoot": False,
            "runAsUser": 0,
            "allowPrivilegeEscalation": True,
            "readOnlyRootFilesystem": False,
        }
    }
    report = scan(template(insecure).stdout, tmp_path, list(readme_skips()))
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22"} <= failed
