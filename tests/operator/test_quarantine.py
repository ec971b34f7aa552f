"""The operator against real media-service processes and the emulated Kubernetes API."""

from __future__ import annotations

import asyncio
import itertools
import signal

import httpx
from aiohttp import web

from tests.support.alertmanager import notification
from tests.support.kube_emulator import eventually
from tests.support.media_process import stop_media_service
from tests.support.operator_harness import (
    FAST_OPERATOR_ENV,
    end_leak,
    fleet_hosts,
    inject_leak,
    start_media,
    stop_operator,
)
from tests.support.peers import SignalingClient, open_session


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
    assert "media_service.leak.faults.injected_leak (unowned)" in event["message"]  # top task group
    assert "media_goroutine_unexplained=" in event["message"] and "media_goroutine_baseline=" in event["message"]

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


def blocked_events(k8s, name: str) -> list[str]:
    return [e["message"] for e in k8s.events(name, "LeakQuarantineBlocked")]


async def test_budget_of_one_quarantines_exactly_one_of_three(k8s, fleet, operator):
    media, port = await fleet(4)
    names = [await k8s.add_pod(m.host) for m in media]
    k8s.refuse_evictions = -1  # a disruption budget keeps the quarantined pod in place
    op = await operator(port, {"MEDIA_OPERATOR_MAX_QUARANTINED": "1", "MEDIA_OPERATOR_STORM_FRACTION": "1"}, pods=4)
    await asyncio.gather(*(inject_leak(m) for m in media[:3]))
    await op.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 2, reason="budget")
    await op.rounds(4, pods=4)
    patched = [n for n in names if k8s.patches(n)]
    assert len(patched) == 1 and patched[0] in names[:3]
    assert [len(k8s.patches(n)) for n in patched] == [1]
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 1
    assert await op.metric("media_operator_decisions_blocked_total", reason="budget") == 2  # reported once each
    others = [n for n in names[:3] if n not in patched]
    for name in others:
        (message,) = blocked_events(k8s, name)
        assert message.startswith("budget: 1 pod(s) in quarantine, budget 1 allows 1")
    assert blocked_events(k8s, names[3]) == []
    assert await op.metric("media_operator_evictions_total", result="retry") >= 1


async def test_storm_quarantines_none_until_it_passes(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    op = await operator(port, pods=3)
    await asyncio.gather(inject_leak(media[0]), inject_leak(media[1]))
    await op.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 2, reason="storm")
    assert await op.metric("media_operator_storm") == 1
    await op.rounds(4, pods=3)
    assert [k8s.patches(n) for n in names] == [[], [], []]
    for name in names[:2]:
        (event,) = k8s.events(name, "LeakQuarantineBlocked")
        assert event["type"] == "Warning" and "2 of 3 serving pods look leaky at once" in event["message"]
    # One pod recovers: no longer a storm, and the other one (confirmed all along) goes.
    await end_leak(media[0])
    await eventually(lambda: k8s.patches(names[1]), timeout=30, what="quarantine after the storm")
    assert await op.metric("media_operator_storm") == 0
    assert k8s.patches(names[0]) == [] and k8s.patches(names[2]) == []


async def test_dry_run_changes_nothing(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    op = await operator(port, {"MEDIA_OPERATOR_DRY_RUN": "true"}, pods=3)
    await inject_leak(media[0])
    await op.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 1, reason="dry_run")
    await op.rounds(4, pods=3)
    assert blocked_events(k8s, names[0]) == ["dry_run: dry run: would quarantine (scrape)"]
    assert [k8s.patches(n) for n in names] == [[], [], []] and k8s.eviction_attempts == []
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 0
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{media[0].admin_url}/ready")).status_code == 200  # not drained
        # No token configured: the webhook endpoint does not exist.
        assert (await client.post(f"{op.url}/alertmanager", json={})).status_code == 404


async def test_unreadable_metrics_are_never_acted_on(k8s, fleet, operator, tmp_path):
    media, port = await fleet(3, spare=2)
    names = [await k8s.add_pod(m.host) for m in media]
    garbage_host, dead_host = fleet_hosts(5)[3:]

    async def not_metrics(request: web.Request) -> web.Response:
        return web.Response(text="<html>not metrics</html>")

    app = web.Application()
    app.router.add_get("/metrics", not_metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, garbage_host, port).start()
    try:
        garbage = await k8s.add_pod(garbage_host, name="garbage")
        dead = await k8s.add_pod(dead_host, name="dead")
        token = "t0ken"
        op = await operator(
            port, {"MEDIA_OPERATOR_CONFIRM_SECONDS": "3", "MEDIA_OPERATOR_WEBHOOK_TOKEN": token}, pods=5
        )
        await op.wait_metric("media_operator_scrapes_total", lambda v: v >= 2, result="unparseable")
        await op.wait_metric("media_operator_scrapes_total", lambda v: v >= 2, result="error")

        # An alert for either pod does not override unreadable metrics.
        async with httpx.AsyncClient() as client:
            for pod in (garbage, dead):
                response = await client.post(
                    f"{op.url}/alertmanager",
                    json=notification(pod, f"fp-{pod}"),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert response.status_code == 200 and response.json()["accepted"] == [f"media/{pod}"]
        await op.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 2, reason="unreadable")

        # A leaky pod that stops answering (hung) before its window ends is not quarantined.
        await inject_leak(media[0])
        await op.rounds(2, pods=5)
        media[0].proc.send_signal(signal.SIGSTOP)
        try:
            await op.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 3, reason="unreadable")
            await op.rounds(3, pods=5, timeout=60)
        finally:
            media[0].proc.send_signal(signal.SIGCONT)
        assert [k8s.patches(n) for n in [*names, garbage, dead]] == [[]] * 5
        assert any("metrics cannot be read" in m for m in blocked_events(k8s, names[0]))
    finally:
        await runner.cleanup()


async def test_flapping_gauge_is_not_quarantined(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    op = await operator(port, {"MEDIA_OPERATOR_CONFIRM_SECONDS": "5"}, pods=3)
    for flaps in (1, 2, 3):
        await inject_leak(media[0])
        await op.rounds(2, pods=3)  # the operator has seen it at 1
        await end_leak(media[0])
        await op.wait_metric("media_operator_decisions_blocked_total", lambda v, n=flaps: v == n, reason="flapping")
    assert [k8s.patches(n) for n in names] == [[], [], []]
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 0


async def test_eviction_refused_by_a_disruption_budget_is_retried_with_backoff(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    k8s.refuse_evictions = 2
    op = await operator(port, pods=3)
    await inject_leak(media[0])
    await eventually(lambda: k8s.pod(names[0]) is None, timeout=30, what="evicted after two refusals")
    attempts = [(t, status) for t, pod, status in k8s.eviction_attempts if pod == names[0]]
    assert [status for _, status in attempts] == [429, 429, 201]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts)]
    interval = float(FAST_OPERATOR_ENV["MEDIA_OPERATOR_SCRAPE_INTERVAL"])
    assert gaps[0] >= interval * 0.9 and gaps[1] >= 2 * interval * 0.9, gaps  # backoff doubles
    await op.wait_metric("media_operator_evictions_total", lambda v: v == 1, result="evicted")
    assert await op.metric("media_operator_evictions_total", result="retry") == 2
    assert len(k8s.events(names[0], "QuarantineEvicted")) == 1


async def test_restart_neither_repeats_a_quarantine_nor_an_eviction(k8s, fleet, operator):
    media, port = await fleet(3)
    # A finalizer keeps the evicted pod in Terminating, as the kubelet does while it shuts down.
    names = [await k8s.add_pod(m.host) for m in media]
    k8s.k8s.objects["v1/pods", "media", names[0]].patch({"metadata": {"finalizers": ["test/kubelet"]}})
    env = {"MEDIA_OPERATOR_COOLDOWN_SECONDS": "300"}
    first = await operator(port, env, pods=3)
    await inject_leak(media[0])
    await eventually(
        lambda: (k8s.pod(names[0]) or {}).get("metadata", {}).get("deletionTimestamp"),
        timeout=30,
        what="evicted pod terminating",
    )
    assert await stop_operator(first) == 0

    await inject_leak(media[1])
    second = await operator(port, env, pods=3)
    # The cooldown comes back from the first pod's annotation: the new leak must wait.
    await second.wait_metric("media_operator_decisions_blocked_total", lambda v: v == 1, reason="cooldown")
    await second.rounds(3, pods=3)
    assert len(k8s.patches(names[0])) == 1 and k8s.patches(names[1]) == []
    assert [status for _, _, status in k8s.eviction_attempts] == [201]
    assert await second.metric("media_operator_quarantines_total", source="scrape") == 0
    assert await second.metric("media_operator_evictions_total", result="evicted") == 0
    k8s.k8s.objects["v1/pods", "media", names[0]].patch({"metadata": {"finalizers": []}})


async def test_quarantined_pod_keeps_its_session_and_is_evicted_when_it_ends(k8s, fleet, operator, tmp_path):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    client = await SignalingClient.connect(media[0].ws_url)
    peer = await open_session(client)
    try:
        await asyncio.to_thread(media[0].poll_metric, "media_sessions_active", lambda v: v == 1, 20.0)
        op = await operator(port, pods=3)
        await inject_leak(media[0])
        await eventually(lambda: k8s.patches(names[0]), timeout=30, what="quarantine")
        await op.rounds(4, pods=3)
        assert k8s.eviction_attempts == []  # one session left: it is not cut off
        assert await peer.echo("still here") == "still here"
    finally:
        await peer.close()
        await client.close()
    # The drained process exits once its last session is gone; if it did before the operator read
    # 0 sessions, the kubelet would restart the container: so does the test.
    await eventually(
        lambda: k8s.pod(names[0]) is None or media[0].proc.poll() is not None,
        timeout=30,
        what="eviction or the drained process's exit",
    )
    restarted = None
    if k8s.pod(names[0]) is not None:
        restarted = await asyncio.to_thread(start_media, tmp_path, media[0].host, media[0].port, port, media[0].env)
    try:
        await eventually(lambda: k8s.pod(names[0]) is None, timeout=30, what="evicted once the session ended")
        assert [(pod, status) for _, pod, status in k8s.eviction_attempts] == [(names[0], 201)]
        (event,) = await eventually(
            lambda: k8s.events(names[0], "QuarantineEvicted"), timeout=10, what="QuarantineEvicted event"
        )
        assert event["message"] == "Evicted from quarantine: no sessions left"
    finally:
        if restarted is not None:
            await asyncio.to_thread(stop_media_service, restarted)


async def test_cluster_wide_operator_sees_every_namespace(k8s, fleet, operator):
    media, port = await fleet(3)
    names = [
        await k8s.add_pod(media[0].host, namespace="team-a", name="a-0"),
        await k8s.add_pod(media[1].host, name="media-b"),
        await k8s.add_pod(media[2].host, namespace="team-c", name="c-0"),
    ]
    op = await operator(port, {"MEDIA_OPERATOR_NAMESPACES": ""}, pods=3)
    await inject_leak(media[0])
    await eventually(lambda: k8s.pod(names[0], "team-a") is None, timeout=30, what="evicted in team-a")
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 1
    assert k8s.patches(names[1]) == [] and k8s.patches(names[2]) == []


LEAKY_EXPOSITION = """\
media_goroutine_count 1042.0
media_goroutine_baseline 12.0
media_potential_goroutine_leak 1.0
media_sessions_active 2.0
"""


async def test_a_pod_with_a_bad_task_dump_is_still_quarantined(k8s, fleet, operator):
    """/debug/tasks answers a JSON list (the real service cannot be made to): no summary, no failed round."""
    media, port = await fleet(2, spare=1)
    names = [await k8s.add_pod(m.host) for m in media]
    stub_host = fleet_hosts(3)[2]

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=LEAKY_EXPOSITION)

    async def tasks(request: web.Request) -> web.Response:
        return web.json_response([{"coroutine": "x", "count": 1}])

    async def drain(request: web.Request) -> web.Response:
        return web.json_response({"draining": True})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/tasks", tasks)
    app.router.add_post("/admin/drain", drain)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, stub_host, port).start()
    try:
        stub = await k8s.add_pod(stub_host, name="stub")
        op = await operator(port, {"MEDIA_OPERATOR_MAX_QUARANTINED": "1"}, pods=3)
        await eventually(lambda: k8s.events(stub, "LeakQuarantined"), timeout=30, what="quarantine of the stub pod")
        (event,) = k8s.events(stub, "LeakQuarantined")
        assert "top task groups: task dump is not a JSON object" in event["message"]
        assert len(k8s.patches(stub)) == 1 and [k8s.patches(n) for n in names] == [[], []]
        assert await op.metric("media_operator_quarantines_total", source="scrape") == 1
        assert "round_failed" not in op.log() and "action_failed" not in op.log()
    finally:
        await runner.cleanup()
