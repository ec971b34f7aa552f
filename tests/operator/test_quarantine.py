"""The operator against real media-service processes and the emulated Kubernetes API."""

from __future__ import annotations

import httpx

from tests.operator.emulator import eventually
from tests.operator.harness import inject_leak


async def test_injected_leak_is_quarantined_drained_and_evicted(k8s, fleet, operator):
    (leaky, healthy1, healthy2), port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in (leaky, healthy1, healthy2)]
    op = await operator(port, {"MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "600"}, pods=3)
    await op.rounds(2, pods=3)
    assert k8s.patches(names[0]) == []

    await inject_leak(leaky)
    await eventually(lambda: k8s.events(names[0], "LeakQuarantined"), timeout=30, what="LeakQuarantined event")
    (patch,) = k8s.patches(names[0])
    meta = patch["metadata"]
    assert meta["labels"] == {"media-service/pool": "quarantined"}
    ann = meta["annotations"]
    assert set(ann) == {"media-service/quarantined-at", "media-service/quarantine-reason", "media-service/evict-after"}
    assert "media_potential_goroutine_leak=1 confirmed by scrape" in ann["media-service/quarantine-reason"]
    (event,) = k8s.events(names[0], "LeakQuarantined")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Pod"
    assert "media_service.leak.faults.injected_leak (none)" in event["message"]  # top task group
    assert "media_goroutine_unowned=" in event["message"] and "media_goroutine_baseline=" in event["message"]

    # Drained: readiness is off, sessions are kept.
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{leaky.admin_url}/ready")).status_code == 503
        assert (await client.get(f"{healthy1.admin_url}/ready")).status_code == 200

    # No session left on it: evicted through the Eviction API, once.
    await eventually(lambda: k8s.pod(names[0]) is None, timeout=30, what="quarantined pod evicted")
    assert [(pod, status) for _, pod, status in k8s.eviction_attempts] == [(names[0], 201)]
    await op.rounds(2, pods=2)
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 1
    assert await op.metric("media_operator_evictions_total", result="evicted") == 1
    assert await op.metric("media_operator_pods_watched") == 2
    assert k8s.patches(names[1]) == [] and k8s.patches(names[2]) == []
    assert len(k8s.eviction_attempts) == 1
