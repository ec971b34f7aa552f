"""The whole alerting path, live: the real media service (fire drill on, fast leak sampling) is
scraped by a real Prometheus evaluating the fast variant of alerts/, which fires to a real
Alertmanager routing with the example configuration to the real operator's webhook, and the
operator, against the Kubernetes emulator, quarantines the pod. Ending the leak resolves the
alert, and the resolved notification changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx

from tests.support.alertmanager import alertmanager_server, example_config
from tests.support.kube_emulator import NAMESPACE, eventually
from tests.support.prometheus import fast_rules, prometheus_server, static_job

LEAK = "MediaServiceGoroutineLeak"


def notifications(log: str) -> list[dict]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == "alertmanager_notification"]


async def test_leak_alert_is_routed_to_the_operator_which_quarantines_the_pod(k8s, fleet, operator, tmp_path: Path):
    (media,), admin_port = await fleet(1)
    pod = await k8s.add_pod(media.host)
    token_file = tmp_path / "token"
    token_file.write_text("e2e-token\n")
    # No confirmation window the test would wait for: only the alert can lead to the quarantine.
    op = await operator(
        admin_port,
        {"MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": str(token_file), "MEDIA_OPERATOR_CONFIRM_SECONDS": "3600"},
        pods=1,
    )
    with contextlib.ExitStack() as stack:
        # The servers start in threads: the emulator the operator talks to runs on this loop.
        am = await asyncio.to_thread(
            stack.enter_context,
            alertmanager_server(tmp_path / "am", example_config(f"{op.url}/alertmanager", token_file)),
        )
        prom = await asyncio.to_thread(
            stack.enter_context,
            prometheus_server(
                tmp_path / "prom",
                scrape_configs=[
                    static_job("media-service", f"{media.host}:{admin_port}", {"namespace": NAMESPACE, "pod": pod}),
                    static_job("media-operator", op.url.removeprefix("http://")),
                ],
                rule_paths=fast_rules(tmp_path / "rules"),
                alertmanager_urls=[am.url],
            ),
        )
        baseline = await asyncio.to_thread(media.poll_metric, "media_goroutine_baseline", lambda v: v > 0)
        await asyncio.to_thread(
            prom.wait_for_query,
            'media_goroutine_baseline{job="media-service"}',
            lambda r: bool(r) and float(r[0]["value"][1]) > 0,
        )

        leaked = int(3 * baseline) + 1
        async with httpx.AsyncClient(base_url=media.admin_url, timeout=10) as admin:
            assert (await admin.post("/debug/leak", params={"tasks": str(leaked)})).status_code == 200

            events = await eventually(
                lambda: k8s.events(pod, "LeakQuarantined"), timeout=120, what="quarantine after the alert fired"
            )
            (patch,) = k8s.patches(pod)
            assert patch["metadata"]["labels"]["media-service/pool"] == "quarantined"
            assert "confirmed by alertmanager" in patch["metadata"]["annotations"]["media-service/quarantine-reason"]
            assert "injected_leak" in events[0]["message"]  # the top task group, from /debug/tasks
            assert await op.metric("media_operator_quarantines_total", source="alertmanager") == 1
            firing = [n for n in notifications(op.log()) if n["accepted"]]
            assert [n["accepted"] for n in firing] == [[f"{NAMESPACE}/{pod}"]]

            assert (await admin.delete("/debug/leak")).json()["stopped"] == leaked

        def resolved_seen() -> bool:
            return f"{LEAK} {NAMESPACE}/{pod}: resolved" in (i for n in notifications(op.log()) for i in n["ignored"])

        # The operator handles a notification before it answers Alertmanager: once it is logged,
        # whatever it would change has been changed.
        await eventually(resolved_seen, timeout=120, what="the resolved notification at the operator")
        assert len(k8s.patches(pod)) == 1 and len(k8s.events(pod, "LeakQuarantined")) == 1
        assert await op.metric("media_operator_quarantines_total", source="alertmanager") == 1
        assert LEAK not in {a["labels"]["alertname"] for a in prom.alerts(state="firing")}
        assert not [a for a in prom.alerts(state="firing") if a["labels"]["alertname"].startswith("MediaOperator")]
