"""Least privilege, checked: the operator's Role grants exactly what the operator calls.

Runs the lifecycle that needs every permission (watch, quarantine patch, Events, eviction refused
until the deadline, deletion as the last resort), then compares the calls recorded by the emulator
during this test and every earlier operator test of the session with the Role the chart renders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.kube_emulator import SESSION_CALLS, eventually
from tests.support.operator_harness import inject_leak

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "media-service"
HELM = ROOT / ".tools" / "bin" / "helm"


def granted_by_chart(*values: str) -> set[tuple[str, str, str]]:
    helm = str(HELM) if HELM.exists() else shutil.which("helm")
    if helm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("helm is missing (CI must have it: .tools/bin/helm)")
        pytest.skip("helm is missing: install helm v4 into .tools/bin (see README)")
    args = [helm, "template", "t", str(CHART), "--namespace", "media"]
    for value in values:
        args += ["--set", value]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    roles = [
        doc
        for doc in yaml.safe_load_all(rendered)
        if isinstance(doc, dict)
        and doc.get("kind") in ("Role", "ClusterRole")
        and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    assert roles, "the chart renders no Role for the operator"
    grants = set()
    for role in roles:
        for rule in role["rules"]:
            grants |= {
                (verb, group, resource)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            }
    return grants


async def test_role_grants_exactly_what_the_operator_calls(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    k8s.refuse_evictions = -1
    op = await operator(
        port, {"MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "1", "MEDIA_OPERATOR_DELETE_GRACE_SECONDS": "1"}, pods=3
    )
    await inject_leak(media[0])
    await eventually(lambda: k8s.pod(names[0]) is None, timeout=30, what="deleted as the last resort")
    await op.wait_metric("media_operator_evictions_total", lambda v: v == 1, result="deleted")
    assert await op.metric("media_operator_evictions_total", result="retry") >= 1
    assert len(k8s.events(names[0], "QuarantineDeleted")) == 1

    called = {(c.verb, c.group, c.resource) for c in k8s.operator_calls()} | SESSION_CALLS
    namespaced = granted_by_chart()
    assert called <= namespaced, f"called but not granted: {sorted(called - namespaced)}"
    assert namespaced <= called, f"granted but never called: {sorted(namespaced - called)}"
    assert granted_by_chart("operator.rbac.clusterWide=true") == namespaced
    # Every call stays in the watched namespace (a namespaced Role could not grant anything else).
    assert all(c.path.startswith("/api/v1/namespaces/media/") for c in k8s.operator_calls())
