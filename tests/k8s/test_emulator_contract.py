"""The fast operator tests run against kmock's emulator (tests/support/kube_emulator.py); this test
holds the emulator to what the real API server does with the calls the operator makes: the same
evictions, sent to both, must get the same answers and leave the pod in the same state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.support import kube_emulator
from tests.support.kube_cluster import Cluster
from tests.support.kubelet import Kubelet

NAMESPACE = "contract"
POD = "evictable"
#: No kubelet runs on this node: a pod there stays Terminating after a graceful deletion, as the
#: real API server leaves it until the kubelet confirms.
ELSEWHERE = "node-without-kubelet"


def summary(response: httpx.Response) -> dict[str, Any]:
    """What the operator reads of an answer: the code, and for a refusal its reason and causes."""
    body = response.json()
    causes = [c.get("reason") for c in (body.get("details") or {}).get("causes", [])]
    return {"code": response.status_code, "reason": body.get("reason"), "causes": causes}


async def evictions_seen_by(
    client: httpx.AsyncClient, refuse: Callable[[], Awaitable[None]], allow: Callable[[], Awaitable[None]]
) -> list[dict[str, Any]]:
    """Evict a pod while a disruption budget refuses, then once it allows, then a pod that is gone."""
    pods = f"/api/v1/namespaces/{NAMESPACE}/pods"
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": POD, "namespace": NAMESPACE}}
    seen = []
    await refuse()
    seen.append(summary(await client.post(f"{pods}/{POD}/eviction", json=body)))
    await allow()
    allowed = await client.post(f"{pods}/{POD}/eviction", json=body)
    pod = (await client.get(f"{pods}/{POD}")).json()
    seen.append({**summary(allowed), "terminating": bool(pod["metadata"].get("deletionTimestamp"))})
    missing = {**body, "metadata": {**body["metadata"], "name": "no-such-pod"}}
    seen.append(summary(await client.post(f"{pods}/no-such-pod/eviction", json=missing)))
    return seen


RUNNING = {
    "phase": "Running",
    "podIP": "127.0.0.99",
    "conditions": [{"type": "Ready", "status": "True"}],
}


def pod_body() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "labels": {"app": POD}},
        "spec": {"nodeName": ELSEWHERE, "containers": [{"name": "media", "image": "media-service:test"}]},
    }


async def on_the_real_api(cluster: Cluster) -> list[dict[str, Any]]:
    budgets = f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets"
    with cluster.api() as admin:
        admin.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}).raise_for_status()
        admin.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod_body()).raise_for_status()
        # Running and Ready: a budget protects only those (a Pending pod is evicted regardless).
        admin.patch(
            f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}/status",
            json={"status": RUNNING},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
    async with httpx.AsyncClient(**cluster.client_options()) as client:

        async def refuse() -> None:
            budget = {
                "metadata": {"name": POD},
                "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": POD}}},
            }
            (await client.post(budgets, json=budget)).raise_for_status()
            # The disruption controller must have counted the pod first.
            deadline = asyncio.get_running_loop().time() + 30
            while (await client.get(f"{budgets}/{POD}")).json().get("status", {}).get("currentHealthy") != 1:
                assert asyncio.get_running_loop().time() < deadline, "the disruption controller never saw the budget"
                await asyncio.sleep(0.1)

        async def allow() -> None:
            (await client.delete(f"{budgets}/{POD}")).raise_for_status()

        try:
            return await evictions_seen_by(client, refuse, allow)
        finally:
            await client.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}", json={"gracePeriodSeconds": 0})


async def on_the_emulator() -> list[dict[str, Any]]:
    async with kube_emulator.cluster(operator_calls=False) as emulator:
        emulator.termination_seconds = 30  # what is compared is the state right after the eviction
        async with emulator.k8s.post(f"/api/v1/namespaces/{NAMESPACE}/pods", json=pod_body()) as created:
            assert created.status in (200, 201)
        async with httpx.AsyncClient(base_url=emulator.url) as client:

            async def refuse() -> None:
                emulator.refuse_evictions = -1

            async def allow() -> None:
                emulator.refuse_evictions = 0

            return await evictions_seen_by(client, refuse, allow)


async def test_the_emulator_answers_evictions_as_the_real_api_server_does(
    cluster: Cluster, kubelet: Kubelet | None
) -> None:
    real = await on_the_real_api(cluster)
    emulated = await on_the_emulator()
    assert real == [
        {"code": 429, "reason": "TooManyRequests", "causes": ["DisruptionBudget"]},
        {"code": 201, "reason": None, "causes": [], "terminating": True},  # graceful: the kubelet finishes it
        {"code": 404, "reason": "NotFound", "causes": []},
    ]
    assert emulated == real
