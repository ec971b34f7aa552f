"""The operator's safety rules against the real API server: a budget of one pod in quarantine with
three leaking, and a restart half-way through a quarantine that must not repeat any action. What the
operator did is read from the audit log, in the order the API server received it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.k8s.release import (
    auth_secret,
    events,
    evictions,
    installed,
    metric,
    operator_calls,
    pod_names,
    pods,
    pool,
    quarantines,
    ready_media_pods,
    ready_operators,
    start_leak,
    with_operator,
)
from tests.k8s.test_quarantine import every_media_pod_budget
from tests.support.kube_cluster import Cluster, poll
from tests.support.kubelet import Kubelet
from tests.support.media_process import token
from tests.support.peers import SignalingClient, open_session

POD_NAME = "authentication.kubernetes.io/pod-name"  # the audit log's record of a bound token's pod


@pytest.mark.timeout(300)
def test_a_budget_of_one_quarantines_three_leaking_pods_one_at_a_time(
    cluster: Cluster, kubelet: Kubelet | None, tmp_path: Path
) -> None:
    values = {**with_operator(maxQuarantined="1", stormFraction=1), "replicaCount": 4}
    with installed(cluster, "budget", values, tmp_path) as namespace:
        serving = ready_media_pods(cluster, namespace, 4)
        budget = every_media_pod_budget(cluster, namespace)  # holds the first one in quarantine
        leaking = sorted(p["metadata"]["name"] for p in serving[:3])
        for pod in serving[:3]:
            start_leak(cluster, pod)

        def blocked() -> list[dict]:
            return [
                e for e in events(cluster, namespace, "LeakQuarantineBlocked") if e["message"].startswith("budget:")
            ]

        held_back = poll(lambda: len(blocked()) == 2 and blocked(), 90, "two leaking pods held back by the budget")
        (first,) = poll(lambda: quarantines(operator_calls(cluster, namespace)), 30, "the one quarantine")
        assert first in leaking
        assert sorted([first, *(e["involvedObject"]["name"] for e in held_back)]) == leaking
        assert all(e["message"].startswith("budget: 1 pod(s) in quarantine, budget 1 allows 1") for e in held_back)
        assert [
            pool(p) for p in pods(cluster, namespace) if p["metadata"]["name"] == serving[3]["metadata"]["name"]
        ] == ["serving"]
        with cluster.api() as api:  # evictions allowed again: each one frees the budget for the next
            assert api.delete(budget).status_code == 200
        poll(lambda: not set(leaking) & set(pod_names(cluster, namespace)), 180, "all three quarantined and evicted")

        calls = operator_calls(cluster, namespace)
        assert sorted(quarantines(calls)) == leaking and sorted(evictions(calls)) == leaking  # each once
        # Never two at once: every quarantine after the first follows the eviction of the one before.
        order = [(e["requestReceivedTimestamp"], e["verb"], e["objectRef"]["name"]) for e in calls
                 if e["verb"] == "patch" or (e["objectRef"].get("subresource") == "eviction"
                                             and e["responseStatus"]["code"] == 201)]  # fmt: skip
        kinds = [verb for _, verb, _ in sorted(order)]
        assert kinds == ["patch", "create"] * 3, order
        assert serving[3]["metadata"]["name"] in pod_names(cluster, namespace)


@pytest.mark.timeout(240)
async def test_a_restarted_operator_repeats_neither_the_quarantine_nor_the_eviction(
    cluster: Cluster, stand_in: Kubelet, tmp_path: Path
) -> None:
    # Budget 2, so that what holds the second leak back is the cooldown the new operator read back.
    values = with_operator(cooldownSeconds=300, maxQuarantined="2")
    # Media on the pod's own address, which the stand-in makes a loopback one (refused by default).
    values["extraEnv"] = [
        {"name": "MEDIA_ICE_HOST_ADDRESSES", "value": "$(POD_IP)"},
        {"name": "MEDIA_ICE_ALLOW_LOOPBACK", "value": "1"},
    ]
    with installed(cluster, "restart", values, tmp_path) as namespace:
        target, other = await asyncio.to_thread(ready_media_pods, cluster, namespace, 2)
        name = target["metadata"]["name"]
        # A session keeps the quarantined pod from eviction while the operator restarts.
        secret = auth_secret(cluster, namespace)
        client = await SignalingClient.connect(
            f"ws://{target['status']['podIP']}:8080/ws", token=token("alice", secret=secret)
        )
        peer = await open_session(client)
        try:
            await asyncio.to_thread(
                poll, lambda: metric(cluster, target, "media_sessions_active") == 1, 20, "the session on the pod"
            )
            await asyncio.to_thread(start_leak, cluster, target)
            await asyncio.to_thread(
                poll, lambda: quarantines(operator_calls(cluster, namespace)) == [name], 60, "the quarantine"
            )
            first = await asyncio.to_thread(poll, lambda: operator_pod(cluster, namespace), 30, "the operator pod")
            with cluster.api() as api:
                api.delete(f"/api/v1/namespaces/{namespace}/pods/{first}").raise_for_status()
            second = await asyncio.to_thread(
                poll, lambda: (pod := operator_pod(cluster, namespace)) != first and pod, 90, "a new operator pod"
            )
            # The new operator decides (the cooldown it read back from the quarantined pod holds a new leak) ...
            serving = await asyncio.to_thread(ready_media_pods, cluster, namespace, 2)
            await asyncio.to_thread(start_leak, cluster, serving[0])

            def cooled_down() -> list[dict]:
                found = events(cluster, namespace, "LeakQuarantineBlocked")
                return [e for e in found if e["message"].startswith("cooldown:")]

            await asyncio.to_thread(poll, cooled_down, 90, "the new operator holding a new leak back (cooldown)")
            # ... and repeats nothing: one quarantine, one Event, no eviction while the session lasts.
            calls = operator_calls(cluster, namespace)
            assert quarantines(calls) == [name] and evictions(calls) == []
            assert {c["user"]["extra"][POD_NAME][0] for c in calls if c["verb"] != "patch"} >= {second}
            assert [e["involvedObject"]["name"] for e in events(cluster, namespace, "LeakQuarantined")] == [name]
            assert await peer.echo("still here") == "still here"
        finally:
            await peer.close()
            await client.close()
        await asyncio.to_thread(poll, lambda: name not in pod_names(cluster, namespace), 90, "the eviction")
        calls = operator_calls(cluster, namespace)
        (eviction,) = [c for c in calls if c["objectRef"].get("subresource") == "eviction"]
        assert eviction["responseStatus"]["code"] == 201
        assert eviction["user"]["extra"][POD_NAME] == [second]  # by the new operator, once
        assert quarantines(calls) == [name]
        assert other["metadata"]["name"] in pod_names(cluster, namespace)


def operator_pod(cluster: Cluster, namespace: str) -> str | None:
    """The name of the release's one Ready operator pod."""
    ready = ready_operators(cluster, namespace)
    return ready[0]["metadata"]["name"] if len(ready) == 1 else None
