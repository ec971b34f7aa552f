"""The alert path on the real control plane: a real Prometheus (built by .ci/install-k8s: Debian's
leaves Kubernetes discovery out) finds the media pods and the operator
through kubernetes_sd_configs against this API server (with alerts/prometheus.example.yaml, under a
Role of its own), scrapes them at their pod addresses, fires the leak alert to a real Alertmanager,
which calls the operator's webhook with the token from the chart's Secret; the operator, which
would not act on its own scrapes for an hour, quarantines the pod."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import httpx
import pytest
import yaml

from tests.k8s.release import events, installed, pods, pool, ready_media_pods, start_leak, with_operator
from tests.k8s.test_quarantine import every_media_pod_budget
from tests.support.alertmanager import alertmanager_server, example_config
from tests.support.kube_cluster import Cluster, poll
from tests.support.kubelet import Kubelet
from tests.support.prometheus import ALERTS_DIR, fast_rules, prometheus_server

LEAK = "MediaServiceGoroutineLeak"
#: What Prometheus needs for discovery, as the example's header says.
DISCOVERY_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def prometheus_token(cluster: Cluster, namespace: str) -> str:
    """A token of a `prometheus` ServiceAccount bound to a Role with DISCOVERY_RULES only."""
    base = f"/api/v1/namespaces/{namespace}"
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = {"metadata": {"name": "prometheus"}, "rules": DISCOVERY_RULES}
    binding = {
        "metadata": {"name": "prometheus"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
    }
    with cluster.api() as api:
        api.post(f"{base}/serviceaccounts", json={"metadata": {"name": "prometheus"}}).raise_for_status()
        api.post(f"{rbac}/roles", json=role).raise_for_status()
        api.post(f"{rbac}/rolebindings", json=binding).raise_for_status()
        request = {"spec": {"expirationSeconds": 3600}}
        response = api.post(f"{base}/serviceaccounts/prometheus/token", json=request).raise_for_status()
    token: str = response.json()["status"]["token"]
    return token


def scrape_configs(cluster: Cluster, namespace: str, token_file: Path) -> list[dict]:
    """alerts/prometheus.example.yaml for this namespace, with this API server and credentials
    (in a cluster, Prometheus finds both itself)."""
    jobs = yaml.safe_load((ALERTS_DIR / "prometheus.example.yaml").read_text())["scrape_configs"]
    for job in jobs:
        for discovery in job["kubernetes_sd_configs"]:
            discovery["namespaces"]["names"] = [namespace]
            discovery["api_server"] = cluster.server
            discovery["tls_config"] = {"ca_file": str(cluster.ca_file)}
            discovery["authorization"] = {"credentials_file": str(token_file)}
    return jobs


@pytest.mark.timeout(240)
def test_prometheus_discovers_the_pods_and_its_alert_makes_the_operator_quarantine(
    cluster: Cluster, stand_in: Kubelet, tmp_path: Path
) -> None:
    # An hour of confirmation: only the alert can lead to a quarantine within the test.
    with installed(cluster, "alerting", with_operator(confirmSeconds=3600), tmp_path) as namespace:
        serving = ready_media_pods(cluster, namespace, 2)
        (operator,) = poll(lambda: [p for p in stand_in.running(namespace, "operator") if p.ready], 90, "operator")
        discovery_token = tmp_path / "prometheus-token"
        discovery_token.write_text(prometheus_token(cluster, namespace))
        with cluster.api() as api:
            secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/{namespace}-media-service-operator-webhook")
        webhook_token = tmp_path / "webhook-token"
        webhook_token.write_bytes(base64.b64decode(secret.json()["data"]["token"]))

        with contextlib.ExitStack() as stack:
            routing = example_config(f"http://{operator.ip}:8081/alertmanager", webhook_token)
            am = stack.enter_context(alertmanager_server(tmp_path / "am", routing))
            prom = stack.enter_context(
                prometheus_server(
                    tmp_path / "prom",
                    scrape_configs=scrape_configs(cluster, namespace, discovery_token),
                    rule_paths=fast_rules(tmp_path / "rules"),
                    alertmanager_urls=[am.url],
                    binary=str(cluster.bin_dir / "prometheus"),
                )
            )

            def scraped() -> dict[str, dict]:
                up = [t for t in prom.targets() if t["health"] == "up"]
                return {t["labels"]["pod"]: t for t in up if t["labels"]["job"] == "media-service"}

            targets = poll(lambda: len(scraped()) == 2 and scraped(), 90, "both media pods discovered and scraped")
            assert set(targets) == {p["metadata"]["name"] for p in serving}
            for pod in serving:
                target = targets[pod["metadata"]["name"]]
                assert target["scrapeUrl"] == f"http://{pod['status']['podIP']}:9090/metrics"
                assert target["labels"]["namespace"] == namespace
                assert target["labels"]["media_service_pool"] == "serving"
            poll(lambda: [t for t in prom.targets() if t["labels"]["job"] == "media-operator"], 60, "the operator")

            name = serving[0]["metadata"]["name"]
            every_media_pod_budget(cluster, namespace)  # keeps it in quarantine, and scraped, for the last check
            start_leak(cluster, serving[0])
            (firing,) = prom.wait_for_alert(LEAK, timeout=90)
            assert firing["labels"]["pod"] == name and firing["labels"]["namespace"] == namespace

            def quarantined() -> dict | None:
                return next((p for p in pods(cluster, namespace) if p["metadata"]["name"] == name), None)

            pod = poll(lambda: (found := quarantined()) and pool(found) == "quarantined" and found, 90, "quarantine")
            assert "confirmed by alertmanager" in pod["metadata"]["annotations"]["media-service/quarantine-reason"]
            (event,) = events(cluster, namespace, "LeakQuarantined")
            assert event["involvedObject"]["name"] == name
            metrics = httpx.get(f"http://{operator.ip}:8081/metrics", timeout=5).text
            assert 'media_operator_quarantines_total{source="alertmanager"} 1.0' in metrics
            assert 'media_operator_quarantines_total{source="scrape"} 0.0' in metrics
            # Still scraped in quarantine, now with its new pool: the drain is what people watch then.
            poll(
                lambda: scraped().get(name, {}).get("labels", {}).get("media_service_pool") == "quarantined",
                60,
                "the quarantined pod scraped with its pool label",
            )
