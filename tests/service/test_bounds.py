"""Bounded everything, on the real process: the session cap, the connect deadline, peers that
vanish, and a churn of hundreds of sessions after which the process is back to idle."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from tests.support.media_process import FAST_LEAK_ENV, MediaProcess, auth_header, media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp, open_session


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_session_cap_is_retryable(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path, env={"MEDIA_MAX_SESSIONS": "2"}) as media:
        client = await SignalingClient.connect(media.ws_url)
        peers = [await open_session(client) for _ in range(2)]
        extra = make_peer()
        await client.send({"type": "offer", "sdp": (await offer_sdp(extra))[0]})
        error = await client.recv("error")
        assert error["code"] == "session_limit"
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            refused = await http.post(
                "/whip", content=(await offer_sdp(whip := make_peer()))[0], headers={"content-type": "application/sdp"}
            )
        assert refused.status_code == 503 and refused.json()["error"] == "session_limit"
        assert int(refused.headers["retry-after"]) > 0
        # Counted whichever way the offer came: one over the WebSocket, one over WHIP.
        assert media.metric("media_sessions_rejected_total", {"code": "session_limit"}) == 2
        # A slot that frees up is usable again.
        await client.send({"type": "bye", "session": peers[0].session})
        await client.recv("bye", session=peers[0].session)
        replacement = await open_session(client)
        assert await replacement.echo("in") == "in"
        for peer in [*peers, extra, whip, replacement]:
            await peer.close()
        await client.close()


async def test_a_session_that_never_connects_is_closed(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path, env={"MEDIA_SESSION_CONNECT_TIMEOUT": "1"}) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = make_peer()
        await client.send({"type": "offer", "sdp": (await offer_sdp(peer))[0]})
        session = (await client.recv("answer"))["session"]  # the answer is never applied
        assert await client.recv("bye", session=session, timeout=10) == {
            "type": "bye",
            "session": session,
            "reason": "timeout",
        }
        assert media.metric("media_sessions_closed_total", {"reason": "timeout"}) == 1
        assert media.metric("media_sessions_active") == 0
        await peer.close()
        await client.close()


async def test_a_peer_that_goes_away_is_removed_at_once(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = await open_session(client)
        await peer.close()  # no bye: the peer connection itself ends
        bye = await client.recv("bye", session=peer.session, timeout=20)
        assert bye["reason"] in ("closed", "failed")
        assert media.metric("media_sessions_active") == 0
        await client.close()


@pytest.mark.slow
async def test_churn_returns_to_idle(tmp_path: Path, no_leaks: None) -> None:
    """200 sessions opened and closed, ten at a time: threads, descriptors, tasks back to idle."""
    # One user's ten clients churn faster than MEDIA_OFFER_RATE_PER_USER allows: not under test here.
    env = {**FAST_LEAK_ENV, "MEDIA_OFFER_RATE_PER_USER": "10000"}
    async with media_service_async(tmp_path, env=env) as media:
        pid = media.proc.pid
        clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(10)]
        media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        idle = (threads_of(pid), fds_of(pid), media.metric("media_goroutine_count"))

        async def one_session(client: SignalingClient) -> None:
            peer = await open_session(client)
            assert await peer.echo("churn") == "churn"
            await client.send({"type": "bye", "session": peer.session})
            await client.recv("bye", session=peer.session)
            await peer.close()

        for _ in range(20):
            await asyncio.gather(*(one_session(c) for c in clients))
        assert media.metric("media_sessions_created_total") == 200
        assert media.metric("media_sessions_closed_total", {"reason": "closed"}) == 200

        await poll(lambda: (threads_of(pid), fds_of(pid)) <= idle[:2], "threads and fds back to idle", media)
        media.poll_metric("media_goroutine_count", lambda v: v <= idle[2], timeout=30)
        assert media.metric("media_asyncio_tasks", {"owner": "orphaned"}) == 0
        assert media.metric("media_potential_goroutine_leak") == 0
        for client in clients:
            await client.close()


async def poll(predicate, what: str, media: MediaProcess, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{media.log()[-2000:]}")
        await asyncio.sleep(0.1)
