"""POST /alertmanager: the same decision path as scraping, behind a bearer token."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.support.alertmanager import alert, example_config, notification, start_alertmanager
from tests.support.kube_emulator import eventually
from tests.support.operator_harness import inject_leak


async def test_alertmanager_notifications(k8s, fleet, operator, tmp_path):
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    token_file = tmp_path / "token"
    token_file.write_text("webhook-s3cret\n")
    # A confirmation window no test waits for: only the notification can trigger the quarantine.
    op = await operator(
        port, {"MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": str(token_file), "MEDIA_OPERATOR_CONFIRM_SECONDS": "3600"}, pods=3
    )
    url = f"{op.url}/alertmanager"
    auth = {"Authorization": "Bearer webhook-s3cret"}
    target = names[1]
    async with httpx.AsyncClient() as client:

        async def post(payload, headers=auth, **kw) -> httpx.Response:
            return await client.post(url, json=payload, headers=headers, **kw)

        firing = notification(target, "fp-1")
        assert (await post(firing, headers={})).status_code == 401
        assert (await post(firing, headers={"Authorization": "Bearer wrong"})).status_code == 401
        bad = await client.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json() == {"error": "body is not JSON"}
        bad = await post({**firing, "version": "3"})
        assert bad.status_code == 400 and "version" in bad.json()["error"]

        resolved = await post(notification(target, "fp-1", status="resolved"))
        assert resolved.status_code == 200
        assert resolved.json() == {
            "accepted": [],
            "ignored": [{"alert": f"MediaServiceGoroutineLeak media/{target}", "reason": "resolved"}],
        }
        other = await post(notification(target, "fp-2", name="SomethingElse"))
        assert other.json()["ignored"][0]["reason"] == "alert name not in the allow-list"
        stranger = await post(notification("not-ours", "fp-3"))
        assert stranger.json()["ignored"][0]["reason"] == "pod not in scope"
        await op.rounds(2, pods=3)
        assert [k8s.patches(n) for n in names] == [[], [], []]

        # An alert for a pod whose gauge reads 0 is accepted, and does nothing.
        healthy = await post(notification(names[0], "fp-0"))
        assert healthy.json() == {"accepted": [f"media/{names[0]}"], "ignored": []}
        await op.rounds(3, pods=3)
        assert [k8s.patches(n) for n in names] == [[], [], []]

        # The target leaks; a window of an hour means only the alert can confirm it.
        await inject_leak(media[1])
        await op.rounds(2, pods=3)
        assert k8s.patches(target) == []
        first, duplicate = await post(firing), await post(firing)
        assert first.status_code == duplicate.status_code == 200
        assert first.json() == {"accepted": [f"media/{target}"], "ignored": []}
        assert duplicate.json()["ignored"] == [
            {"alert": f"MediaServiceGoroutineLeak media/{target}", "reason": "duplicate"}
        ]

    await eventually(lambda: k8s.events(target, "LeakQuarantined"), timeout=30, what="quarantine by alert")
    (patch,) = k8s.patches(target)
    reason = patch["metadata"]["annotations"]["media-service/quarantine-reason"]
    assert (
        reason.startswith("media_potential_goroutine_leak=1 confirmed by alertmanager (") and "gauge held" not in reason
    )
    await op.rounds(3, pods=3)
    assert len(k8s.patches(target)) == 1 and k8s.patches(names[0]) == [] and k8s.patches(names[2]) == []
    assert await op.metric("media_operator_quarantines_total", source="alertmanager") == 1
    assert await op.metric("media_operator_quarantines_total", source="scrape") == 0


async def test_no_decision_and_no_webhook_before_the_pod_list_is_complete(k8s, fleet, operator):
    """The start-up gate opens one interval after kopf starts its watch: make that long."""
    media, port = await fleet(1)
    await inject_leak(media[0])
    name = await k8s.add_pod(media[0].host)
    op = await operator(
        port,
        {
            "MEDIA_OPERATOR_WEBHOOK_TOKEN": "t",
            "MEDIA_OPERATOR_SCRAPE_INTERVAL": "60",
            "MEDIA_OPERATOR_CONFIRM_SECONDS": "0",
            "MEDIA_OPERATOR_STORM_FRACTION": "1",
        },
    )
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{op.url}/alertmanager", json=notification(name, "fp-1"), headers={"Authorization": "Bearer t"}
        )
    assert response.status_code == 503 and response.headers["Retry-After"] == "60"
    assert await op.scrapes() == 0 and k8s.patches(name) == []


async def test_real_alertmanager_drives_the_quarantine(k8s, fleet, operator, tmp_path):
    """The example routing of alerts/ with a real Alertmanager: its v4 payloads, its bearer token."""
    media, port = await fleet(3)
    names = [await k8s.add_pod(m.host) for m in media]
    token_file = tmp_path / "token"
    token_file.write_text("am-s3cret")
    op = await operator(
        port, {"MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": str(token_file), "MEDIA_OPERATOR_CONFIRM_SECONDS": "3600"}, pods=3
    )
    config = example_config(f"{op.url}/alertmanager", token_file)
    am = await asyncio.to_thread(start_alertmanager, tmp_path / "alertmanager", config)
    try:
        await inject_leak(media[2])  # only the alert can confirm it (a window of an hour)
        labels = {
            "alertname": "MediaServiceGoroutineLeak",
            "namespace": "media",
            "pod": names[2],
            "severity": "warning",
        }
        await asyncio.to_thread(am.post_alerts, [alert(labels)])
        await eventually(lambda: k8s.events(names[2], "LeakQuarantined"), timeout=30, what="quarantine by alert")
        assert await op.metric("media_operator_quarantines_total", source="alertmanager") == 1
        await asyncio.to_thread(am.post_alerts, [alert(labels, resolved=True)])
        resolved = f"MediaServiceGoroutineLeak media/{names[2]}: resolved"
        await eventually(
            lambda: any(resolved in n.get("ignored", []) for n in _notifications(op.log())),
            timeout=30,
            what="resolved notification received and ignored",
        )
        assert [n["accepted"] for n in _notifications(op.log()) if n["accepted"]] == [[f"media/{names[2]}"]]
        await op.rounds(2, pods=3)
        assert [len(k8s.patches(n)) for n in names] == [0, 0, 1]
        assert "Notify" not in am.log(), am.log()  # every notification was delivered (2xx)
    finally:
        await asyncio.to_thread(am.stop)


def _notifications(log: str) -> list[dict]:
    """What the operator logged of each notification it handled."""
    return [json.loads(line) for line in log.splitlines() if '"event": "alertmanager_notification"' in line]
