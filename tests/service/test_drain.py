"""Graceful drain of the real process: SIGTERM, the drain window, a second signal, /admin/drain."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.media_process import TEST_SECRET, MediaProcess, auth_header, start_media_service, stop_media_service
from tests.support.peers import SignalingClient, make_peer, offer_sdp, open_session


def events(media: MediaProcess) -> list[dict]:
    return [json.loads(line) for line in media.log().splitlines() if line.startswith("{")]


def event(media: MediaProcess, name: str) -> dict:
    found = [e for e in events(media) if e.get("event") == name]
    assert found, f"no {name} event in the log:\n{media.log()}"
    return found[-1]


async def wait_exit(media: MediaProcess, timeout: float) -> int:
    return await asyncio.to_thread(media.wait, timeout)


async def poll_status(url: str, status: int, timeout: float = 5.0) -> float:
    """Seconds until ``url`` answers ``status``."""
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() - start < timeout:
            if (await http.get(url)).status_code == status:
                return time.monotonic() - start
            await asyncio.sleep(0.01)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s")


@pytest.fixture
async def media_factory(tmp_path: Path):
    started: list[MediaProcess] = []

    async def start(**env: str) -> MediaProcess:
        media = await asyncio.to_thread(start_media_service, tmp_path, env=env)
        started.append(media)
        return media

    yield start
    for media in started:
        await asyncio.to_thread(stop_media_service, media)


async def test_sigterm_drains_live_sessions_then_exits_0(media_factory, no_leaks: None) -> None:
    media = await media_factory(MEDIA_DRAIN_SECONDS="30")
    clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(3)]
    peers = [await open_session(c) for c in clients]
    idle = await SignalingClient.connect(media.ws_url, user="idle")

    media.signal(signal.SIGTERM)
    assert await poll_status(f"{media.admin_url}/ready", 503, timeout=5) < 5
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{media.admin_url}/health")).status_code == 200
    for client in [*clients, idle]:
        assert (await client.recv("draining"))["retry_after"] > 0
    assert media.metric("media_draining") == 1 and media.metric("media_ready") == 0

    # New sessions are refused with a retryable error; existing ones go on.
    await clients[0].send({"type": "offer", "sdp": (await offer_sdp(late := make_peer()))[0]})
    assert (await clients[0].recv("error"))["code"] == "draining"
    async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
        refused = await http.post(
            "/whip", content=(await offer_sdp(whip := make_peer()))[0], headers={"content-type": "application/sdp"}
        )
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
    for peer in peers:
        assert await peer.echo("still serving") == "still serving"

    # The process exits as soon as the last session ends, well before the 30 s window.
    for client, peer in zip(clients, peers, strict=True):
        await client.send({"type": "bye", "session": peer.session})
        await client.recv("bye", session=peer.session)
    started = time.monotonic()
    assert await wait_exit(media, 15) == 0
    assert time.monotonic() - started < 10
    assert event(media, "drain_started")["sessions"] == 3
    assert event(media, "drain_complete")["reason"] == "no sessions left"
    assert event(media, "sessions_closed")["count"] == 0
    event(media, "server_stopped")
    for client in [*clients, idle]:
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    for peer in [*peers, late, whip]:
        await peer.close()


async def test_drain_window_closes_what_remains_with_bye_shutdown(media_factory, no_leaks: None) -> None:
    media = await media_factory(MEDIA_DRAIN_SECONDS="2")
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    media.signal(signal.SIGTERM)
    await client.recv("draining")
    assert await client.recv("bye", session=peer.session, timeout=10) == {
        "type": "bye",
        "session": peer.session,
        "reason": "shutdown",
    }
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert await wait_exit(media, 10) == 0
    assert event(media, "drain_window_ended")["sessions"] == 1
    assert event(media, "sessions_closed")["count"] == 1
    await peer.close()


async def test_second_signal_closes_everything_at_once(media_factory, no_leaks: None) -> None:
    media = await media_factory(MEDIA_DRAIN_SECONDS="60")
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    media.signal(signal.SIGTERM)
    await client.recv("draining")
    media.signal(signal.SIGINT)
    assert (await client.recv("bye", session=peer.session))["reason"] == "shutdown"
    assert await wait_exit(media, 10) == 1  # forced: not a clean drain
    event(media, "forced_shutdown")
    await peer.close()


async def test_sigterm_during_an_offer(media_factory, no_leaks: None) -> None:
    """Whichever wins, the client gets an answer or a draining error, and the process exits 0."""
    media = await media_factory(MEDIA_DRAIN_SECONDS="2")
    client = await SignalingClient.connect(media.ws_url)
    peer = make_peer()
    await client.send({"type": "offer", "sdp": (await offer_sdp(peer))[0]})
    media.signal(signal.SIGTERM)
    reply = await client.recv(timeout=10)
    while reply["type"] == "draining":
        reply = await client.recv(timeout=10)
    assert reply["type"] == "answer" or (reply["type"], reply["code"]) == ("error", "draining")
    assert await wait_exit(media, 15) == 0
    await peer.close()


async def test_signal_before_ready_exits_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    secret = tmp_path / "secret"
    secret.write_bytes(TEST_SECRET)
    args = ["--port", "0", "--admin-port", "0", "--host", "127.0.0.1", "--auth-secret-file", str(secret)]
    proc = subprocess.Popen([sys.executable, "-m", "media_service", *args], stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)  # likely during imports: the default action applies
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    proc.stderr.close()


async def test_admin_drain_stops_new_sessions_without_exiting(media_factory, no_leaks: None) -> None:
    media = await media_factory()
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{media.admin_url}/admin/drain")
        assert response.status_code == 202 and response.json() == {"status": "draining", "sessions": 1}
        assert (await http.get(f"{media.admin_url}/ready")).status_code == 503
    await client.recv("draining")
    await client.send({"type": "bye", "session": peer.session})
    await client.recv("bye", session=peer.session)
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    assert media.proc.poll() is None  # drained, still running: the operator evicts it later
    late = await SignalingClient.connect(media.ws_url, user="late")
    assert (await late.recv("draining"))["retry_after"] > 0
    media.signal(signal.SIGTERM)
    assert await wait_exit(media, 10) == 0
    await peer.close()
    await client.close()
