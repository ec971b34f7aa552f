"""What the k8s tests do to a release of the chart on the real control plane: install it into a
restricted namespace, find its pods, start a leak in one, and read what the operator did from the
API server's own records (Events and the audit log)."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.chart import CHART
from tests.support.kube_cluster import Cluster, kubectl_env, poll
from tests.support.tools import require_tool

MEDIA = "app.kubernetes.io/component=media"
SERVING = f"{MEDIA},media-service/pool=serving"
POOL = "media-service/pool"

#: Settings that make a leak visible, and the operator act on it, within a test's time.
FAST: dict[str, dict[str, Any]] = {
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


def with_operator(**settings: Any) -> dict[str, dict[str, Any]]:
    """FAST with these operator values on top."""
    return {**FAST, "operator": {**FAST["operator"], **settings}}


def helm(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("helm", install="make tools")
    return subprocess.run([binary, *args], env=kubectl_env(cluster), capture_output=True, text=True, timeout=180)


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("kubectl", install="make tools")
    return subprocess.run(
        [binary, *args], env=kubectl_env(cluster), input=stdin, capture_output=True, text=True, timeout=120
    )


def restricted_namespace(cluster: Cluster, name: str) -> None:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    with cluster.api() as api:
        response = api.post("/api/v1/namespaces", json=namespace)
        assert response.status_code in (201, 409), response.text


@contextmanager
def installed(cluster: Cluster, namespace: str, values: dict[str, Any], folder: Path) -> Iterator[str]:
    """The chart installed as release ``namespace`` into that restricted namespace; uninstalled after."""
    restricted_namespace(cluster, namespace)
    path = folder / f"{namespace}-values.yaml"
    path.write_text(yaml.safe_dump(values))
    result = helm(cluster, "install", namespace, str(CHART), "--namespace", namespace, "--values", str(path))
    assert result.returncode == 0, result.stderr
    try:
        yield namespace
    finally:
        helm(cluster, "uninstall", namespace, "--namespace", namespace, "--wait", "--timeout", "2m")
        with cluster.api() as api:  # on a cluster of the user's, leave nothing behind
            api.delete(f"/api/v1/namespaces/{namespace}")


def pods(cluster: Cluster, namespace: str, selector: str = MEDIA) -> list[dict[str, Any]]:
    with cluster.api() as api:
        response = api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector})
        return response.raise_for_status().json()["items"]


def pod_names(cluster: Cluster, namespace: str) -> list[str]:
    return [p["metadata"]["name"] for p in pods(cluster, namespace)]


def ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def ready_media_pods(cluster: Cluster, namespace: str, count: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Poll until exactly ``count`` serving media pods exist and all are Ready."""

    def probe() -> list[dict[str, Any]]:
        found = pods(cluster, namespace, SERVING)
        return found if len(found) == count and all(ready(p) for p in found) else []

    return poll(probe, timeout, f"{count} Ready media pods in {namespace}")


def pool(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get(POOL)


def admin(cluster: Cluster, pod: dict[str, Any], port: int = 9090) -> httpx.Client:
    """A client of the pod's admin port: directly for the stand-in's pods (on this machine's
    loopback, which the API server will not proxy to), through the API server's pod proxy for a
    real cluster's (whose pod network this machine need not reach)."""
    ip = pod["status"]["podIP"]
    if ipaddress.ip_address(ip).is_loopback:
        return httpx.Client(base_url=f"http://{ip}:{port}", timeout=5)
    meta = pod["metadata"]
    options = cluster.client_options()
    options["base_url"] = f"{cluster.server}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}:{port}/proxy"
    return httpx.Client(**options)


def metric(cluster: Cluster, pod: dict[str, Any], name: str, port: int = 9090) -> float | None:
    """The value of the unlabelled series ``name`` on the pod's /metrics, None if absent."""
    with admin(cluster, pod, port) as client:
        text = client.get("/metrics").text
    values = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(values[0]) if values else None


def start_leak(cluster: Cluster, pod: dict[str, Any], tasks: int = 300) -> None:
    """Once the pod's leak baseline is taken, make it leak ``tasks`` tasks (fault injection)."""
    poll(lambda: (metric(cluster, pod, "media_goroutine_baseline") or -1) > 0, 30, "the leak baseline")
    with admin(cluster, pod) as client:
        assert client.post("/debug/leak", params={"tasks": str(tasks)}).status_code == 200


def ready_operators(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """The release's operator pods that are Ready and not terminating."""
    found = pods(cluster, namespace, "app.kubernetes.io/component=operator")
    return [p for p in found if ready(p) and not p["metadata"].get("deletionTimestamp")]


def events(cluster: Cluster, namespace: str, *reasons: str) -> list[dict[str, Any]]:
    """The namespace's Events with one of ``reasons``, oldest first."""
    with cluster.api() as api:
        items = api.get(f"/api/v1/namespaces/{namespace}/events").raise_for_status().json()["items"]
    found = [e for e in items if e["reason"] in reasons]
    return sorted(found, key=lambda e: e["metadata"]["creationTimestamp"])


def operator_user(namespace: str) -> str:
    """The chart's operator ServiceAccount, as the audit log names it (release = namespace)."""
    return f"system:serviceaccount:{namespace}:{namespace}-media-service-operator"


def operator_calls(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    """Every request the release's operator made, in the order the API server received them."""
    user = operator_user(namespace)
    calls = [e for e in cluster.audit() if e["user"].get("username") == user and "objectRef" in e]
    return sorted(calls, key=lambda e: e["requestReceivedTimestamp"])


def quarantines(calls: list[dict[str, Any]]) -> list[str]:
    """The pods the operator patched, in order (its only patch is the quarantine)."""
    return [e["objectRef"]["name"] for e in calls if e["verb"] == "patch" and e["objectRef"]["resource"] == "pods"]


def evictions(calls: list[dict[str, Any]], code: int = 201) -> list[str]:
    """The pods whose eviction the API server answered with ``code``, in order."""
    return [
        e["objectRef"]["name"]
        for e in calls
        if e["objectRef"].get("subresource") == "eviction" and e["responseStatus"]["code"] == code
    ]


def auth_secret(cluster: Cluster, namespace: str) -> bytes:
    """The HMAC secret the release's pods verify access tokens with."""
    with cluster.api() as api:
        secret = api.get(f"/api/v1/namespaces/{namespace}/secrets/{namespace}-media-service-auth").json()
    (value,) = secret["data"].values()
    return base64.b64decode(value)
