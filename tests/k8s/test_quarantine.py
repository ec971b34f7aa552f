"""A fire drill against the real control plane: the operator, run with the chart's own service
account, quarantines a leaking pod; the real ReplicaSet controller releases it and starts a
replacement; the real Eviction API evicts it once its sessions are gone; the stand-in kubelet stops
its process, which drains and exits 0. The audit log then shows every call the operator made, none
refused, each allowed by the chart's Role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.release import (
    FAST,
    events,
    installed,
    operator_calls,
    pod_names,
    pods,
    pool,
    ready_media_pods,
    ready_operators,
    start_leak,
    with_operator,
)
from tests.support.kube_cluster import Cluster, poll
from tests.support.kubelet import Kubelet

NAMESPACE = "drill"


@pytest.fixture(scope="module")
def drill(cluster: Cluster, kubelet: Kubelet | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with installed(cluster, NAMESPACE, FAST, tmp_path_factory.mktemp("drill")) as release:
        yield release


def test_a_leaking_pod_is_quarantined_replaced_evicted_and_drained(
    cluster: Cluster, kubelet: Kubelet | None, drill: str
) -> None:
    serving = ready_media_pods(cluster, NAMESPACE, 2)
    poll(lambda: ready_operators(cluster, NAMESPACE), 60, "the operator running with the chart's service account")
    target = serving[0]
    name = target["metadata"]["name"]
    start_leak(cluster, target)

    def quarantined() -> dict | None:
        return next((p for p in pods(cluster, NAMESPACE) if p["metadata"]["name"] == name), None)

    pod = poll(lambda: (found := quarantined()) and pool(found) == "quarantined" and found, 60, "the quarantine")
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
    assert [e["involvedObject"]["name"] for e in events(cluster, NAMESPACE, "LeakQuarantined")] == [name]
    # No sessions: evicted through the Eviction API; the stand-in stops it; it drains and exits 0.
    poll(lambda: name not in pod_names(cluster, NAMESPACE), 60, "the eviction")
    if kubelet is not None:  # the stand-in saw the process drain and exit
        (finished,) = [p for p in kubelet.finished if p.name == name]
        assert finished.exit_code == 0

    # The audit log: every call the operator made, none refused, each allowed by the chart's own Role.
    calls = operator_calls(cluster, NAMESPACE)
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


def test_a_budget_that_still_selects_the_pod_makes_the_eviction_wait_until_it_allows_it(
    cluster: Cluster, kubelet: Kubelet | None, tmp_path: Path
) -> None:
    """The chart's own PDB selects `pool: serving`, so it never holds a quarantined pod back; a
    user's PDB over every media pod does, and the real Eviction API answers 429 until it allows."""
    with installed(cluster, "guarded", FAST, tmp_path) as namespace:
        serving = ready_media_pods(cluster, namespace, 2)
        pdb_path = every_media_pod_budget(cluster, namespace)
        name = serving[0]["metadata"]["name"]
        start_leak(cluster, serving[0])

        def refused_evictions() -> list[dict]:
            return [e for e in cluster.audit() if e.get("objectRef", {}).get("subresource") == "eviction"
                    and e["objectRef"].get("name") == name and e["responseStatus"]["code"] == 429]  # fmt: skip

        poll(refused_evictions, 60, "the Eviction API refusing with 429")
        with cluster.api() as api:
            pod = api.get(f"/api/v1/namespaces/{namespace}/pods/{name}").json()
        assert pool(pod) == "quarantined"
        assert not pod["metadata"].get("deletionTimestamp")  # still there: the budget holds it
        with cluster.api() as api:  # the budget allows it now: the operator's next retry evicts
            assert api.delete(pdb_path).status_code == 200
        poll(lambda: name not in pod_names(cluster, namespace), 90, "the eviction once the budget allows it")


def every_media_pod_budget(cluster: Cluster, namespace: str) -> str:
    """A user's PodDisruptionBudget that allows no disruption of any media pod; returns its path."""
    path = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "every-media-pod"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app.kubernetes.io/component": "media"}}},
    }
    with cluster.api() as api:
        assert api.post(path, json=budget).status_code == 201
    return f"{path}/every-media-pod"


def decisions(cluster: Cluster, namespace: str) -> list[dict]:
    """The operator's decisions so far: each is an Event, whether it acted or was held back."""
    return events(cluster, namespace, "LeakQuarantined", "LeakQuarantineBlocked")


def test_the_storm_guard_quarantines_none_when_most_pods_leak_at_once(
    cluster: Cluster, kubelet: Kubelet | None, tmp_path: Path
) -> None:
    with installed(cluster, "storm", FAST, tmp_path) as namespace:
        for pod in ready_media_pods(cluster, namespace, 2):
            start_leak(cluster, pod)
        found = poll(lambda: len(decisions(cluster, namespace)) == 2 and decisions(cluster, namespace), 60, "both")
        assert {e["reason"] for e in found} == {"LeakQuarantineBlocked"}
        assert all(e["message"].startswith("storm:") and e["type"] == "Warning" for e in found)
        assert len(pods(cluster, namespace)) == 2  # nobody quarantined, nobody replaced


def test_dry_run_decides_and_records_but_changes_nothing(
    cluster: Cluster, kubelet: Kubelet | None, tmp_path: Path
) -> None:
    with installed(cluster, "dry-run-drill", with_operator(dryRun=True), tmp_path) as namespace:
        start_leak(cluster, ready_media_pods(cluster, namespace, 2)[0])
        found = poll(lambda: decisions(cluster, namespace), 60, "the operator's decision")
        assert [e["message"].split(":")[0] for e in found] == ["dry_run"]
        assert [pool(p) for p in pods(cluster, namespace)] == ["serving", "serving"]
        calls = operator_calls(cluster, namespace)
        assert not [e for e in calls if e["verb"] in ("patch", "delete") or e["objectRef"].get("subresource")]
