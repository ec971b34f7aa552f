"""checkov on the rendered manifests: no failed check, and every skipped check is listed with its
reason in the chart README."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tempfile
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


#: Default values, every feature on, and an external Redis and TURN servers from Secrets.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "all-on": ALL_ON,
    "secrets": {
        "redis": {"existingSecret": "media-redis", "password": {"existingSecret": "media-redis-password"}},
        "ice": {"existingSecret": "media-turn"},
    },
}


@functools.cache
def report_of(variant: str) -> dict[str, Any]:
    """checkov's report on one variant, scanned once per session (a scan takes seconds)."""
    chart_wide = [check for check, scope in readme_skips().items() if scope == "chart-wide"]
    with tempfile.TemporaryDirectory() as tmp:
        return scan(template(VARIANTS[variant]).stdout, Path(tmp), chart_wide)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_failed_checkov_check(variant: str) -> None:
    report = report_of(variant)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["failed"] == 0
    assert report["summary"]["passed"] > 100
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped - set(readme_skips()) == set(), (
        f"skipped in the manifests but not listed in the README: {skipped - set(readme_skips())}"
    )


@pytest.mark.slow
def test_every_skip_in_the_readme_is_in_the_manifests() -> None:
    """None stale: each resource-level skip the README lists is taken in one of the variants."""
    skips = readme_skips()
    skipped = {c["check_id"] for variant in VARIANTS for c in report_of(variant)["results"]["skipped_checks"]}
    assert skipped == {check for check, scope in skips.items() if scope != "chart-wide"}


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
