"""The operator bounded too: pods' responses read up to a cap, every
malformed webhook request a 400, and bursts of alerts served by one round each, not one round
(a scrape of every pod) per alert."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from media_operator.podclient import MAX_METRICS_BYTES, PodClient
from tests.support.alertmanager import notification

CHUNK = b"# " + b"x" * (1024 * 1024 - 3) + b"\n"


@pytest.fixture
async def huge_pod() -> AsyncIterator[int]:
    """A pod whose /metrics and /debug/tasks stream 200 MB (without holding them: chunk by chunk)."""

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(200):
            await response.write(CHUNK)
        return response

    app = web.Application()
    app.router.add_get("/metrics", huge)
    app.router.add_get("/debug/tasks", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield port
    await runner.cleanup()


async def test_a_pod_cannot_make_the_operator_read_200_mb(huge_pod: int) -> None:
    tracemalloc.start()
    try:
        async with PodClient(huge_pod, timeout=30, concurrency=2) as pods:
            scraped = await pods.scrape("127.0.0.1")
            summary = await pods.top_tasks("127.0.0.1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scraped.result == "error" and f"over {MAX_METRICS_BYTES}" in (scraped.reading.error or "")
    assert summary == "/debug/tasks unreadable (TooLarge)"
    assert peak < 3 * MAX_METRICS_BYTES, f"peak {peak / 2**20:.0f} MiB"  # was the whole 200 MB and more


async def test_malformed_webhook_requests_are_400_and_bursts_coalesce(k8s, fleet, operator) -> None:
    media, port = await fleet(1)
    name = await k8s.add_pod(media[0].host)
    op = await operator(
        port,
        {
            "MEDIA_OPERATOR_WEBHOOK_TOKEN": "t",
            "MEDIA_OPERATOR_SCRAPE_INTERVAL": "5",
            "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "2",
            "MEDIA_OPERATOR_DRY_RUN": "1",
        },
    )
    url, auth = f"{op.url}/alertmanager", {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(timeout=10) as client:
        deadline = time.monotonic() + 30
        while (await client.post(url, json={}, headers=auth)).status_code == 503:  # the start-up gate
            assert time.monotonic() < deadline, "the webhook never opened"
            await asyncio.sleep(0.2)

        for value in (b"Bearer t\xff", "Bearer té".encode()):  # not UTF-8 (was a 500); UTF-8
            non_ascii = await client.post(url, json={}, headers=[(b"authorization", value)])
            assert non_ascii.status_code == 400, non_ascii.text
        deep = "[" * 100_000 + "]" * 100_000
        nested = await client.post(url, content=deep, headers={**auth, "Content-Type": "application/json"})
        assert nested.status_code == 400 and nested.json() == {"error": "body is nested too deep"}

        before = await op.scrapes()
        started = time.monotonic()
        for i in range(45):  # a burst: 45 notifications in about 1.5 s
            response = await client.post(url, json=notification(name, f"fp-{i}"), headers=auth)
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.03)
        await asyncio.sleep(1.5)
        elapsed = time.monotonic() - started
        rounds = await op.scrapes() - before
        # One round a second at most while alerts keep coming (one pod: one scrape a round), plus
        # the regular rounds every 5 s; before, every notification started its own round.
        assert rounds <= elapsed + 3, f"{rounds:.0f} scrapes in {elapsed:.1f}s"
        assert "Traceback" not in op.log()
