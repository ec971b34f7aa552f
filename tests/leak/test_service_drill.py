"""The fire drill on the real service process: injected tasks trip the leak gauge, the task dump
names them, and ending them clears it. Without MEDIA_FAULT_INJECTION the drill is not there."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.media_process import FAST_LEAK_ENV, media_service

DRILL_ENV = {**FAST_LEAK_ENV, "MEDIA_FAULT_INJECTION": "1"}


def test_fire_drill_trips_and_clears_the_leak_gauge(tmp_path: Path) -> None:
    with media_service(tmp_path, host="127.0.0.2", env=DRILL_ENV) as media, httpx.Client(
        base_url=media.admin_url, timeout=10
    ) as admin:
        baseline = media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        assert media.metric("media_potential_goroutine_leak") == 0
        leaked = int(3 * baseline) + 1
        started = admin.post("/debug/leak", params={"tasks": str(leaked)})
        assert started.status_code == 200, started.text
        assert started.json()["active"] == leaked
        media.poll_metric("media_potential_goroutine_leak", lambda v: v == 1)
        assert (media.metric("media_asyncio_tasks", {"owner": "none"}) or 0) >= leaked
        top = (admin.get("/debug/tasks")).json()["groups"][0]
        assert (top["coroutine"], top["owner"], top["count"]) == (
            "media_service.leak.faults.injected_leak",
            "none",
            leaked,
        )
        stopped = admin.delete("/debug/leak")
        assert stopped.json()["stopped"] == leaked
        media.poll_metric("media_potential_goroutine_leak", lambda v: v == 0)
        assert "leak_suspected" in media.log()


def test_the_drill_is_off_by_default(tmp_path: Path) -> None:
    with media_service(tmp_path, host="127.0.0.2", env=FAST_LEAK_ENV) as media, httpx.Client(
        base_url=media.admin_url, timeout=10
    ) as admin:
        assert (admin.post("/debug/leak", params={"tasks": "5"})).status_code in (404, 405)
        assert (admin.get("/debug/tasks")).status_code == 200
