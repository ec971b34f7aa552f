"""Real aiortc peers against the real service process: media is echoed on the same session."""

from __future__ import annotations

import re

import httpx
import pytest
from aiortc import RTCSessionDescription

from tests.support.media_process import MediaProcess, auth_header, media_service
from tests.support.peers import SignalingClient, make_peer, offer_sdp, open_session


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    with media_service(tmp_path_factory.mktemp("echo")) as media:
        yield media


async def test_data_channel_is_echoed(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    assert await peer.echo("hello") == "hello"
    assert await peer.echo("x" * 10_000) == "x" * 10_000
    await client.send({"type": "bye", "session": peer.session})
    assert await client.recv("bye", session=peer.session) == {
        "type": "bye",
        "session": peer.session,
        "reason": "closed",
    }
    await peer.close()
    await client.close()


async def test_video_is_echoed(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client, video=True, data=False)
    assert await peer.wait_frames(30) >= 30  # decoded frames that came back from the service
    await peer.close()
    await client.close()


async def test_trickled_candidates_connect(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client, trickle=True)
    assert await peer.echo("trickled") == "trickled"
    await peer.close()
    await client.close()


async def test_closing_the_socket_closes_its_sessions(media: MediaProcess, no_leaks: None) -> None:
    created = media.metric("media_sessions_created_total")
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    assert media.metric("media_sessions_created_total") == created + 1
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    await peer.close()


async def test_whip_create_trickle_delete(media: MediaProcess, no_leaks: None) -> None:
    peer = make_peer(video=True, data=False)
    sdp, candidates = await offer_sdp(peer, trickle=True)
    async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header(), timeout=10) as http:
        options = await http.options("/whip")
        assert options.status_code == 204
        assert options.headers["accept-post"] == "application/sdp"
        created = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
        assert created.status_code == 201, created.text
        assert created.headers["content-type"].startswith("application/sdp")
        location = created.headers["location"]
        assert re.fullmatch(r"/whip/[\w-]+", location)
        await peer.pc.setRemoteDescription(RTCSessionDescription(created.text, "answer"))
        fragment = "a=mid:0\r\n" + "".join(f"a={c}\r\n" for c in candidates) + "a=end-of-candidates\r\n"
        trickle = {"content-type": "application/trickle-ice-sdpfrag", "if-match": created.headers["etag"]}
        patched = await http.patch(location, content=fragment, headers=trickle)
        assert patched.status_code == 204, patched.text
        assert await peer.wait_frames(15) >= 15
        deleted = await http.delete(location)
        assert deleted.status_code == 200
        assert (await http.delete(location)).status_code == 404
        assert (await http.patch(location, content=fragment, headers=trickle)).status_code == 404
    await peer.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)
