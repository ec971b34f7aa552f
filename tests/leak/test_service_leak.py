"""Leak detection in the real service process. The fire drill: injected tasks trip the leak gauge,
the task dump names them, and ending them clears it; without MEDIA_FAULT_INJECTION it is not
there. And load: many WebSocket clients are not a leak."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import httpx
import websockets

from tests.support.media_process import FAST_LEAK_ENV, access_query, media_service

DRILL_ENV = {**FAST_LEAK_ENV, "MEDIA_FAULT_INJECTION": "1"}


def test_fire_drill_trips_and_clears_the_leak_gauge(tmp_path: Path) -> None:
    with (
        media_service(tmp_path, host="127.0.0.2", env=DRILL_ENV) as media,
        httpx.Client(base_url=media.admin_url, timeout=10) as admin,
    ):
        baseline = media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        assert media.metric("media_potential_goroutine_leak") == 0
        leaked = int(3 * baseline) + 1
        started = admin.post("/debug/leak", params={"tasks": str(leaked)})
        assert started.status_code == 200, started.text
        assert started.json()["active"] == leaked
        media.poll_metric("media_potential_goroutine_leak", lambda v: v == 1)
        assert (media.metric("media_asyncio_tasks", {"owner": "unowned"}) or 0) >= leaked
        top = (admin.get("/debug/tasks")).json()["groups"][0]
        assert (top["coroutine"], top["owner"], top["count"]) == (
            "media_service.leak.faults.injected_leak",
            "unowned",
            leaked,
        )
        stopped = admin.delete("/debug/leak")
        assert stopped.json()["stopped"] == leaked
        media.poll_metric("media_potential_goroutine_leak", lambda v: v == 0)
        assert "leak_suspected" in media.log()
        # The orphan drill: tasks of a long-closed session, what the orphaned-tasks alert watches.
        assert admin.post("/debug/leak", params={"tasks": "5", "orphaned": "1"}).status_code == 200
        media.poll_metric("media_asyncio_tasks", lambda v: v == 5, labels={"owner": "orphaned"})
        assert admin.delete("/debug/leak").json()["stopped"] == 5
        media.poll_metric("media_asyncio_tasks", lambda v: v == 0, labels={"owner": "orphaned"})


def test_the_drill_is_off_by_default(tmp_path: Path) -> None:
    with (
        media_service(tmp_path, host="127.0.0.2", env=FAST_LEAK_ENV) as media,
        httpx.Client(base_url=media.admin_url, timeout=10) as admin,
    ):
        assert (admin.post("/debug/leak", params={"tasks": "5"})).status_code in (404, 405)
        assert (admin.get("/debug/tasks")).status_code == 200


async def _hold_clients(ws_url: str, count: int, connected: asyncio.Event, release: asyncio.Event) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for i in range(count):
            ws = await stack.enter_async_context(websockets.connect(f"{ws_url}?device=d&{access_query(f'load{i}')}"))
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv()) == {"type": "pong"}
        connected.set()
        await release.wait()


def test_many_websocket_clients_are_load_not_a_leak(tmp_path: Path) -> None:
    """Each connection's tasks belong to it, so clients far beyond 3 x baseline are not flagged."""
    with media_service(tmp_path, host="127.0.0.2", env=FAST_LEAK_ENV) as media:
        baseline = media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        clients = int(4 * baseline) + 10

        async def scenario() -> tuple[float, float, float]:
            connected, release = asyncio.Event(), asyncio.Event()
            holder = asyncio.create_task(_hold_clients(media.ws_url, clients, connected, release))
            try:
                await asyncio.wait_for(connected.wait(), 30)
                # Wait for samples taken with every client connected, then read what they say.
                await asyncio.to_thread(media.poll_metric, "media_ws_clients", lambda v: v == clients)
                live = await asyncio.to_thread(
                    media.poll_metric, "media_asyncio_tasks", lambda v: v >= clients, 20.0, {"owner": "live"}
                )
                # An observation window, not a wait: the gauge must stay 0 over ten sampling intervals.
                leak_seen = 0.0
                for _ in range(10):
                    leak_seen = max(leak_seen, media.metric("media_potential_goroutine_leak") or 0)
                    await asyncio.sleep(float(FAST_LEAK_ENV["MEDIA_LEAK_SAMPLE_INTERVAL"]))
                return live, leak_seen, media.metric("media_goroutine_unexplained") or 0
            finally:
                release.set()
                await holder

        live, leak_seen, unowned = asyncio.run(scenario())
    assert live >= clients
    assert leak_seen == 0
    assert unowned <= 3 * baseline
