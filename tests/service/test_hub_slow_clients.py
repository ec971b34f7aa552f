"""Slow WebSocket clients against the real service: they are dropped, and nobody else notices.

50 healthy devices and 5 devices that stop reading right after the handshake all belong to one user;
a sender relays messages to that user. The non-readers' sockets fill up (real TCP backpressure, a
small receive buffer), so the server's sends to them block: the hub must drop them within about the
send timeout while every healthy device gets every message, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.media_process import MediaProcess, access_query, auth_header, media_service_async
from tests.support.non_reader import NonReader

HEALTHY = 50
NON_READERS = 5
MESSAGES = 1500
WINDOW = 50  # messages the sender may be ahead of the slowest healthy device: far below the 256 buffer
PAD = "x" * 1000  # bigger frames fill the non-readers' sockets sooner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def read_messages(ws: ClientConnection, seqs: list[int]) -> None:
    async for raw in ws:
        message = json.loads(raw)
        assert message["type"] == "message", message
        seqs.append(message["data"]["seq"])


async def poll(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


async def metric(media: MediaProcess, name: str) -> float | None:
    return await asyncio.to_thread(media.metric, name)


def server_tasks(media: MediaProcess, coroutine: str) -> int:
    """Live tasks of the service whose coroutine name contains ``coroutine`` (from /debug/tasks)."""
    dump = httpx.get(f"{media.admin_url}/debug/tasks", timeout=5).json()
    return sum(group["count"] for group in dump["groups"] if coroutine in group["coroutine"])


async def poll_server_tasks(media: MediaProcess, expected: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = {name: await asyncio.to_thread(server_tasks, media, name) for name in expected}
        if counts == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"service tasks {counts}, expected {expected}")
        await asyncio.sleep(0.1)


async def poll_metric(media: MediaProcess, name: str, predicate, timeout: float) -> float:
    return await asyncio.to_thread(media.poll_metric, name, predicate, timeout)


async def test_non_readers_are_dropped_and_healthy_clients_get_everything(tmp_path: Path, no_leaks: None) -> None:
    # The sender is deliberately fast; rate limiting (in messages and in relayed bytes) is not under test.
    env = {"MEDIA_WS_RATE_LIMIT": "100000", "MEDIA_WS_RELAY_RATE_BYTES": str(1 << 40)}
    async with media_service_async(tmp_path, host="127.0.0.3", env=env) as media:
        base = media.ws_url
        healthy = [await connect(f"{base}?device=h{i}&{access_query('room')}", max_size=None) for i in range(HEALTHY)]
        seqs: list[list[int]] = [[] for _ in healthy]
        readers = [asyncio.create_task(read_messages(ws, s)) for ws, s in zip(healthy, seqs, strict=True)]
        non_readers = [
            await NonReader.open(media.host, media.port, f"/ws?device=n{i}&{access_query('room')}")
            for i in range(NON_READERS)
        ]
        sender = await connect(f"{base}?device=s", additional_headers=auth_header("sender"))
        try:
            await poll_metric(media, "media_ws_clients", lambda v: v == HEALTHY + NON_READERS + 1, 20)
            assert await metric(media, "media_ws_send_timeouts_total") == 0

            for seq in range(MESSAGES):
                await sender.send(json.dumps({"type": "message", "to": "room", "data": {"seq": seq, "pad": PAD}}))
                if seq % WINDOW == WINDOW - 1:
                    await poll(lambda seq=seq: min(map(len, seqs)) > seq - WINDOW, 30, f"healthy clients reach {seq}")
            await poll(lambda: all(len(s) == MESSAGES for s in seqs), 30, "healthy clients get everything")
            await poll_metric(media, "media_ws_send_timeouts_total", lambda v: v >= NON_READERS, 30)

            for s in seqs:
                assert s == list(range(MESSAGES))
            assert all(ws.close_code is None for ws in [*healthy, sender]), "a healthy client was closed"
            assert await metric(media, "media_ws_send_timeouts_total") == NON_READERS
            # Exact: the non-readers, and only they, left the hub.
            assert await metric(media, "media_ws_clients") == HEALTHY + 1

            dropped = [json.loads(line) for line in media.log().splitlines() if '"ws_client_dropped"' in line]
            assert sorted(d["device"] for d in dropped) == [f"n{i}" for i in range(NON_READERS)], dropped

            # Each non-reader's connection was ended by the server. The close frame can only come
            # after the data the client never read; if it could not be written, the server aborts.
            codes = await asyncio.gather(*(n.read_to_end(timeout=30) for n in non_readers))
            assert all(code in (None, 1013) for code in codes), codes
            # Nothing of theirs is left in the service: writers and connection handlers are gone.
            connected = HEALTHY + 1
            await poll_server_tasks(media, {"Hub._write": connected, "websockets_sansio_impl": connected}, 20)
        finally:
            for n in non_readers:
                n.sock.close()
            await asyncio.gather(*(ws.close() for ws in [*healthy, sender]))
            outcomes = await asyncio.gather(*readers, return_exceptions=True)
        assert all(outcome is None for outcome in outcomes), outcomes
        await poll_metric(media, "media_ws_clients", lambda v: v == 0, 20)
        await poll_server_tasks(media, {"Hub._write": 0, "websockets_sansio_impl": 0}, 20)
