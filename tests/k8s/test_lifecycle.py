"""helm upgrade keeps the Secrets the chart generated; helm uninstall leaves nothing behind, the
real garbage collector removing what the release's objects own."""

from __future__ import annotations

from pathlib import Path

from tests.k8s.release import helm, ready_media_pods, restricted_namespace
from tests.support.chart import CHART
from tests.support.kube_cluster import Cluster, poll
from tests.support.kubelet import Kubelet

NAMESPACE = "upgrades"
RELEASE = "up"
#: Kept on purpose after an uninstall (helm.sh/resource-policy: keep): tokens minted stay valid.
KEPT = {f"{RELEASE}-media-service-auth"}


def secrets(cluster: Cluster) -> dict[str, dict[str, str]]:
    with cluster.api() as api:
        items = api.get(f"/api/v1/namespaces/{NAMESPACE}/secrets").raise_for_status().json()["items"]
    return {s["metadata"]["name"]: s.get("data", {}) for s in items if s.get("type") != "helm.sh/release.v1"}


def namespaced(cluster: Cluster, path: str) -> list[str]:
    with cluster.api() as api:
        return [i["metadata"]["name"] for i in api.get(path).raise_for_status().json()["items"]]


def test_upgrade_keeps_generated_secrets_and_uninstall_leaves_nothing(
    cluster: Cluster, kubelet: Kubelet | None, tmp_path: Path
) -> None:
    restricted_namespace(cluster, NAMESPACE)
    assert helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE).returncode == 0
    ready_media_pods(cluster, NAMESPACE, 2)
    before = secrets(cluster)
    assert {
        f"{RELEASE}-media-service-auth",
        f"{RELEASE}-media-service-redis",
        f"{RELEASE}-media-service-operator-webhook",
    } <= set(before)
    upgraded = helm(
        cluster, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "config.drainSeconds=10"
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert secrets(cluster) == before  # generated once, then found with lookup: nothing rotated

    removed = helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")
    assert removed.returncode == 0, removed.stderr
    for path in (
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        f"/apis/apps/v1/namespaces/{NAMESPACE}/replicasets",
        f"/api/v1/namespaces/{NAMESPACE}/services",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets",
        f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles",
    ):
        leftover = poll(
            lambda p=path: [n for n in namespaced(cluster, p) if n != "kube-root-ca.crt"] == [] or None,
            60,
            f"nothing left under {path}",
        )
        assert leftover
    poll(lambda: namespaced(cluster, f"/api/v1/namespaces/{NAMESPACE}/pods") == [], 90, "every pod gone")
    assert set(secrets(cluster)) == KEPT
    accounts = namespaced(cluster, f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts")
    assert accounts == ["default"]
