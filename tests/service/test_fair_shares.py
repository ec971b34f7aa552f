"""One user cannot hold every session slot: one client filled all 500 slots
over WHIP in 5.6 s. Now a user holds at most MEDIA_MAX_SESSIONS_PER_USER, WebSocket and WHIP
together, and the others still get theirs."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.media_process import auth_header, media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp


async def test_one_user_cannot_take_every_slot(tmp_path: Path, no_leaks: None) -> None:
    env = {"MEDIA_MAX_SESSIONS": "10", "MEDIA_MAX_SESSIONS_PER_USER": "3", "MEDIA_DRAIN_SECONDS": "1"}
    async with media_service_async(tmp_path, env=env) as media:
        peers = []
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header("mallory")) as http:
            codes = []
            for _ in range(12):  # more than the whole process holds
                peer = make_peer()
                peers.append(peer)
                sdp = (await offer_sdp(peer))[0]
                response = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
                codes.append(response.status_code)
                if response.status_code == 503:
                    assert "MEDIA_MAX_SESSIONS_PER_USER (3)" in response.json()["message"]
            assert codes == [201] * 3 + [503] * 9
            # The same user over a WebSocket: the quota is the user's, whatever the protocol.
            ws = await SignalingClient.connect(media.ws_url, user="mallory")
            await ws.send({"type": "offer", "sdp": (await offer_sdp(extra := make_peer()))[0]})
            assert (await ws.recv("error"))["code"] == "session_limit"
            peers.append(extra)
            await ws.close()
        assert media.metric("media_sessions_active") == 3  # 7 slots left for everyone else
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header("alice")) as http:
            other = make_peer()
            peers.append(other)
            response = await http.post(
                "/whip", content=(await offer_sdp(other))[0], headers={"content-type": "application/sdp"}
            )
            assert response.status_code == 201
        for peer in peers:
            await peer.close()


async def test_retry_after_tells_when_a_slot_frees(tmp_path: Path, no_leaks: None) -> None:
    """Slots held by sessions that never connect free at their connect deadline: Retry-After says
    so (it said 2 s while a slot was held 30 s)."""
    env = {"MEDIA_MAX_SESSIONS": "2", "MEDIA_SESSION_CONNECT_TIMEOUT": "20", "MEDIA_DRAIN_SECONDS": "1"}
    async with media_service_async(tmp_path, env=env) as media:
        peers = [make_peer() for _ in range(3)]
        statuses, retry = [], None
        for user, peer in zip(("u1", "u2", "u3"), peers, strict=True):
            async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header(user)) as http:
                response = await http.post(
                    "/whip", content=(await offer_sdp(peer))[0], headers={"content-type": "application/sdp"}
                )
            statuses.append(response.status_code)
            retry = response.headers.get("retry-after")
        assert statuses == [201, 201, 503]
        assert retry is not None and 15 <= int(retry) <= 20, retry
        for peer in peers:
            await peer.close()


async def test_a_user_looping_offers_gets_answers_at_a_bounded_rate(tmp_path: Path, no_leaks: None) -> None:
    """WHIP POST then DELETE in a loop: each answer costs aiortc work, outside the session quota."""
    env = {"MEDIA_OFFER_RATE_PER_USER": "1", "MEDIA_DRAIN_SECONDS": "1"}
    async with media_service_async(tmp_path, env=env) as media:
        peer = make_peer()
        sdp = (await offer_sdp(peer))[0]
        codes = []
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header("mallory")) as http:
            for _ in range(10):
                response = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
                codes.append(response.status_code)
                if response.status_code == 201:
                    await http.delete(response.headers["location"])
                else:
                    assert response.json()["error"] == "rate_limited" and "retry-after" in response.headers
        assert codes.count(201) <= 3 and codes.count(429) >= 7, codes  # burst 2, maybe one refill
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header("alice")) as http:
            response = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
            assert response.status_code == 201  # another user's own rate
            await http.delete(response.headers["location"])
        await peer.close()
