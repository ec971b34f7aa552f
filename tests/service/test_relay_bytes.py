"""Relayed bytes are bounded, on the real process: queues in bytes as
well as messages, non-ASCII relayed as UTF-8 rather than escapes, and fan-out charged to the
sender, size times recipients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.service.test_offer_bounds import rss_kib
from tests.support.media_process import access_query, auth_header, media_service_async
from tests.support.non_reader import NonReader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: About 60 KB of UTF-8, under the 64 KiB message cap: 196 KB once relayed as \u escapes.
TEXT = "é" * 30_000


async def drain(ws: ClientConnection, sizes: list[int]) -> None:
    async for raw in ws:
        sizes.append(len(raw.encode() if isinstance(raw, str) else raw))


async def test_slow_readers_of_non_ascii_messages_hold_bounded_memory(tmp_path: Path, no_leaks: None) -> None:
    """16 devices that stop reading, a sender looping 60 KB of non-ASCII text to them: the
    process's RSS stays far under the chart's 1 GiB, and a reading device gets UTF-8 frames."""
    env = {"MEDIA_WS_RELAY_RATE_BYTES": str(1 << 40)}  # this test is about queues, not the relay charge
    async with media_service_async(tmp_path, env=env) as media:
        base = f"ws://{media.host}:{media.port}/ws"
        stuck = [
            await NonReader.open(media.host, media.port, f"/ws?device=n{i}&{access_query('bob')}") for i in range(16)
        ]
        reader = await connect(f"{base}?device=r", additional_headers=auth_header("bob"), max_size=None)
        sizes: list[int] = []
        reading = asyncio.create_task(drain(reader, sizes))
        sender = await connect(f"{base}?device=s", additional_headers=auth_header("alice"))
        peak = rss_kib(media.proc.pid)
        for i in range(150):
            await sender.send(
                json.dumps({"type": "message", "to": "bob", "data": {"seq": i, "text": TEXT}}, ensure_ascii=False)
            )
            await asyncio.sleep(0.025)  # 40 a second: under the rate limit of 50
            peak = max(peak, rss_kib(media.proc.pid))
        await asyncio.sleep(1)
        peak = max(peak, rss_kib(media.proc.pid))
        assert peak < 400 * 1024, f"RSS peaked at {peak / 1024:.0f} MiB"
        assert sizes and max(sizes) < 64 * 1024, f"relayed frames of {max(sizes)} bytes"
        assert await asyncio.to_thread(media.metric, "media_ws_send_timeouts_total") >= 16  # the non-readers
        for n in stuck:
            await n.read_to_end(timeout=10)
        await sender.close()
        await reader.close()
        await reading


async def test_fan_out_is_charged_to_the_sender(tmp_path: Path, no_leaks: None) -> None:
    """A sender relaying 20 KB messages to a user with 40 devices: what leaves the process is
    bounded by MEDIA_WS_RELAY_RATE_BYTES (default 1 MiB/s, burst 2 MiB), not by the message rate."""
    async with media_service_async(tmp_path) as media:
        base = f"ws://{media.host}:{media.port}/ws"
        devices = [
            await connect(f"{base}?device=d{i}", additional_headers=auth_header("bob"), max_size=None)
            for i in range(40)
        ]
        sizes: list[list[int]] = [[] for _ in devices]
        readers = [asyncio.create_task(drain(ws, s)) for ws, s in zip(devices, sizes, strict=True)]
        sender = await connect(f"{base}?device=s", additional_headers=auth_header("alice"))
        errors: list[dict] = []

        async def sender_errors() -> None:
            async for raw in sender:
                errors.append(json.loads(raw))

        listening = asyncio.create_task(sender_errors())
        started = time.monotonic()
        for i in range(100):  # 40 a second for 2.5 s: 100 × 20 KB × 40 devices = 80 MB unbounded
            await sender.send(json.dumps({"type": "message", "to": "bob", "data": {"seq": i, "pad": "x" * 20_000}}))
            await asyncio.sleep(0.025)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1)
        out = sum(sum(s) for s in sizes)
        allowed = (2 << 20) + (1 << 20) * (elapsed + 1) + 40 * 21_000  # burst, rate, one message in debt
        assert out <= allowed, f"{out} bytes out, {allowed:.0f} allowed"
        assert any(e.get("code") == "rate_limited" for e in errors)
        latency_start = time.monotonic()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{media.admin_url}/health", timeout=5)).status_code == 200
        assert time.monotonic() - latency_start < 0.5
        await sender.close()
        await listening
        for ws in devices:
            await ws.close()
        await asyncio.gather(*readers)
