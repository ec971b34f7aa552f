"""A fire drill against the real control plane: the operator, run with the chart's own service
account, quarantines a leaking pod; the real ReplicaSet controller releases it and starts a
replacement; the real Eviction API evicts it once its sessions are gone; the stand-in kubelet stops
its process, which drains and exits 0. The audit log then shows every call the operator made, none
refused, each allowed by the chart's Role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.k8s.test_install import helm, ready_media_pods, restricted_namespace
from tests.support.chart import CHART
from tests.support.kube_cluster import Cluster, poll
from tests.support.kubelet import Kubelet

NAMESPACE = "drill"
RELEASE = "drill"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-media-service-operator"
FAST = {
    "config": {
        "faultInjection": True,
        "leakSampleInterval": 0.2,
        "leakBaselineSamples": 3,
        "leakOrphanGrace": 0.5,
        "drainSeconds": 5,
    },
    "operator": {
        "scrapeInterval": 1,
        "scrapeTimeout": 1,
        "confirmSeconds": 2,
        "cooldownSeconds": 0,
        "evictAfterSeconds": 120,
    },
}


def labels(pod: dict) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}


def pods_of_release(cluster: Cluster) -> list[dict]:
    with cluster.api() as api:
        selector = "app.kubernetes.io/component=media"
        response = api.get(f"/api/v1/namespaces/{NAMESPACE}/pods", params={"labelSelector": selector})
        return response.raise_for_status().json()["items"]


@pytest.fixture(scope="module")
def drill(cluster: Cluster, kubelet: Kubelet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    restricted_namespace(cluster, NAMESPACE)
    values = tmp_path_factory.mktemp("drill") / "values.yaml"
    values.write_text(yaml.safe_dump(FAST))
    installed = helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(values))
    assert installed.returncode == 0, installed.stderr
    try:
        yield RELEASE
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")


def test_a_leaking_pod_is_quarantined_replaced_evicted_and_drained(
    cluster: Cluster, kubelet: Kubelet, drill: str, tmp_path: Path
) -> None:
    serving = ready_media_pods(cluster, NAMESPACE, 2)
    operator = poll(
        lambda: [p for p in kubelet.pods.values() if p.namespace == NAMESPACE and p.kind == "operator" and p.ready],
        60,
        "the operator running with the chart's service account",
    )
    assert operator, kubelet.errors
    target = serving[0]
    name, ip = target["metadata"]["name"], target["status"]["podIP"]
    admin = f"http://{ip}:9090"

    def baseline() -> bool:
        text = httpx.get(f"{admin}/metrics", timeout=2).text
        return any(
            line.startswith("media_goroutine_baseline ") and float(line.split()[1]) > 0 for line in text.splitlines()
        )

    poll(baseline, 30, "the leak baseline of the target pod")
    assert httpx.post(f"{admin}/debug/leak", params={"tasks": "300"}, timeout=5).status_code == 200

    def quarantined() -> dict | None:
        for pod in pods_of_release(cluster):
            if pod["metadata"]["name"] == name and labels(pod).get("media-service/pool") == "quarantined":
                return pod
        return None

    pod = poll(quarantined, 60, "the operator's quarantine label")
    annotations = pod["metadata"]["annotations"]
    assert {"media-service/quarantined-at", "media-service/quarantine-reason", "media-service/evict-after"} <= set(
        annotations
    )
    # The real ReplicaSet controller lets go of it and starts a replacement: capacity is kept.
    poll(
        lambda: not (quarantined() or {"metadata": {"ownerReferences": [1]}})["metadata"].get("ownerReferences"),
        30,
        "the ReplicaSet to release the quarantined pod",
    )
    replacement = ready_media_pods(cluster, NAMESPACE, 2, 60)
    assert name not in [p["metadata"]["name"] for p in replacement]
    with cluster.api() as api:
        events = api.get(f"/api/v1/namespaces/{NAMESPACE}/events").json()["items"]
    assert any(e["reason"] == "LeakQuarantined" and e["involvedObject"]["name"] == name for e in events)
    # No sessions: evicted through the Eviction API; the stand-in stops it; it drains and exits 0.
    poll(lambda: name not in [p["metadata"]["name"] for p in pods_of_release(cluster)], 60, "the eviction")
    (finished,) = [p for p in kubelet.finished if p.name == name]
    assert finished.exit_code == 0

    # The audit log: every call the operator made, none refused, each allowed by the chart's own Role.
    calls = [e for e in cluster.audit() if e["user"].get("username") == OPERATOR_USER and "objectRef" in e]
    made = {(e["verb"], e["objectRef"]["resource"], e["objectRef"].get("subresource", "")) for e in calls}
    assert {("patch", "pods", ""), ("create", "pods", "eviction"), ("create", "events", "")} <= made
    refused = [e for e in calls if e["responseStatus"]["code"] in (401, 403)]
    assert refused == [], refused
    assert made <= granted(cluster), made - granted(cluster)


def granted(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(verb, resource, subresource) that the chart's Role for the operator grants."""
    with cluster.api() as api:
        roles = api.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles").json()["items"]
    (role,) = [r for r in roles if r["metadata"]["name"].endswith("-operator")]
    allowed = set()
    for rule in role["rules"]:
        for resource in rule["resources"]:
            name, _, subresource = resource.partition("/")
            allowed |= {(verb, name, subresource) for verb in rule["verbs"]}
    return allowed


PDB_NAMESPACE = "guarded"


def test_a_budget_that_still_selects_the_pod_makes_the_eviction_wait_until_it_allows_it(
    cluster: Cluster, kubelet: Kubelet, tmp_path: Path
) -> None:
    """The chart's own PDB selects `pool: serving`, so it never holds a quarantined pod back; a
    user's PDB over every media pod does, and the real Eviction API answers 429 until it allows."""
    restricted_namespace(cluster, PDB_NAMESPACE)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(FAST))
    installed = helm(cluster, "install", "guarded", str(CHART), "--namespace", PDB_NAMESPACE, "--values", str(values))
    assert installed.returncode == 0, installed.stderr
    pdb_path = f"/apis/policy/v1/namespaces/{PDB_NAMESPACE}/poddisruptionbudgets"
    try:
        serving = ready_media_pods(cluster, PDB_NAMESPACE, 2)
        budget = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "every-media-pod"},
            "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app.kubernetes.io/component": "media"}}},
        }
        with cluster.api() as api:
            assert api.post(pdb_path, json=budget).status_code == 201
        target = serving[0]
        name, admin = target["metadata"]["name"], f"http://{target['status']['podIP']}:9090"
        poll(lambda: "media_goroutine_baseline -1" not in httpx.get(f"{admin}/metrics", timeout=2).text, 30, "baseline")
        assert httpx.post(f"{admin}/debug/leak", params={"tasks": "300"}, timeout=5).status_code == 200

        def refused_evictions() -> list[dict]:
            return [
                e
                for e in cluster.audit()
                if e.get("objectRef", {}).get("subresource") == "eviction"
                and e["objectRef"].get("name") == name
                and e["responseStatus"]["code"] == 429
            ]

        poll(refused_evictions, 60, "the Eviction API refusing with 429")
        with cluster.api() as api:
            pod = api.get(f"/api/v1/namespaces/{PDB_NAMESPACE}/pods/{name}").json()
        assert pod["metadata"]["labels"]["media-service/pool"] == "quarantined"
        assert not pod["metadata"].get("deletionTimestamp")  # still there: the budget holds it
        with cluster.api() as api:  # the budget allows it now: the operator's next retry evicts
            assert api.delete(f"{pdb_path}/every-media-pod").status_code == 200
        poll(
            lambda: name not in [p["metadata"]["name"] for p in media_pods_all(cluster, PDB_NAMESPACE)],
            90,
            "the eviction once the budget allows it",
        )
    finally:
        helm(cluster, "uninstall", "guarded", "--namespace", PDB_NAMESPACE, "--wait", "--timeout", "2m")


def media_pods_all(cluster: Cluster, namespace: str) -> list[dict]:
    with cluster.api() as api:
        response = api.get(
            f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "app.kubernetes.io/component=media"}
        )
        return response.raise_for_status().json()["items"]


def leak_and_read_events(cluster: Cluster, namespace: str, values: dict, leaky: int, tmp_path: Path) -> list[dict]:
    """Install with ``values``, start a leak on ``leaky`` pods, and return the operator's Events once
    it has decided (the decision is an Event either way)."""
    restricted_namespace(cluster, namespace)
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    installed = helm(cluster, "install", namespace, str(CHART), "--namespace", namespace, "--values", str(path))
    assert installed.returncode == 0, installed.stderr
    serving = ready_media_pods(cluster, namespace, values.get("replicaCount", 2))
    for pod in serving[:leaky]:
        admin = f"http://{pod['status']['podIP']}:9090"
        poll(
            lambda a=admin: "media_goroutine_baseline -1" not in httpx.get(f"{a}/metrics", timeout=2).text,
            30,
            "baseline",
        )
        assert httpx.post(f"{admin}/debug/leak", params={"tasks": "300"}, timeout=5).status_code == 200

    def decided() -> list[dict]:
        with cluster.api() as api:
            events = api.get(f"/api/v1/namespaces/{namespace}/events").json()["items"]
        return [e for e in events if e["reason"].startswith(("LeakQuarantine", "LeakQuarantined"))]

    return poll(decided, 60, "the operator's decision")


def test_the_storm_guard_quarantines_none_when_most_pods_leak_at_once(
    cluster: Cluster, kubelet: Kubelet, tmp_path: Path
) -> None:
    try:
        events = leak_and_read_events(cluster, "storm", FAST, leaky=2, tmp_path=tmp_path)
        assert {e["reason"] for e in events} == {"LeakQuarantineBlocked"}
        assert all(e["message"].startswith("storm:") and e["type"] == "Warning" for e in events)
        assert len(media_pods_all(cluster, "storm")) == 2  # nobody quarantined, nobody replaced
    finally:
        helm(cluster, "uninstall", "storm", "--namespace", "storm", "--wait", "--timeout", "2m")


def test_dry_run_decides_and_records_but_changes_nothing(cluster: Cluster, kubelet: Kubelet, tmp_path: Path) -> None:
    values = {**FAST, "operator": {**FAST["operator"], "dryRun": True}}
    try:
        events = leak_and_read_events(cluster, "dry-run-drill", values, leaky=1, tmp_path=tmp_path)
        assert [e["message"].split(":")[0] for e in events] == ["dry_run"]
        pods = media_pods_all(cluster, "dry-run-drill")
        assert [p["metadata"]["labels"]["media-service/pool"] for p in pods] == ["serving", "serving"]
        calls = [
            e for e in cluster.audit() if e["user"].get("username").endswith(":dry-run-drill-media-service-operator")
        ]
        assert not [e for e in calls if e["verb"] in ("patch", "delete") or e.get("objectRef", {}).get("subresource")]
    finally:
        helm(cluster, "uninstall", "dry-run-drill", "--namespace", "dry-run-drill", "--wait", "--timeout", "2m")
