"""Interop with the clients WHIP exists for: each test publishes video to the real service and
counts the decoded frames that come back, over WHIP and over the WebSocket protocol.

aiortc peers here; GStreamer's webrtcbin in test_gstreamer.py; headless Chromium in test_browser.py.
"""

from __future__ import annotations

import re

import httpx
import pytest
from aiortc import AudioStreamTrack, RTCRtpSender, RTCSessionDescription

from media_service.dtls import offered_setups
from tests.support.media_process import MediaProcess, auth_header, media_service
from tests.support.peers import Peer, SignalingClient, make_peer, offer_sdp, open_session, without_candidates

FRAMES = 30
#: What the service answers to each offered DTLS role: the DTLS server whenever it may choose.
ANSWERED = {"actpass": "passive", "active": "passive", "passive": "active"}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    with media_service(tmp_path_factory.mktemp("interop")) as media:
        yield media


async def whip_publish(media: MediaProcess, peer: Peer, sdp: str) -> tuple[httpx.AsyncClient, str, str]:
    """POST the offer, apply the answer; returns the client, the session's location and the answer."""
    http = httpx.AsyncClient(base_url=media.public_url, headers=auth_header(), timeout=10)
    created = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
    assert created.status_code == 201, created.text
    await peer.pc.setRemoteDescription(RTCSessionDescription(created.text, "answer"))
    return http, created.headers["location"], created.text


@pytest.mark.parametrize("setup", ["actpass", "active", "passive"])
async def test_whip_echoes_video_whichever_dtls_role_is_offered(
    media: MediaProcess, setup: str, no_leaks: None
) -> None:
    peer = make_peer(video=True, data=False)
    sdp, _ = await offer_sdp(peer, setup=setup)
    http, location, answer = await whip_publish(media, peer, sdp)
    assert set(offered_setups(answer)) == {ANSWERED[setup]}
    assert await peer.wait_frames(FRAMES) >= FRAMES
    assert (await http.delete(location)).status_code == 200
    await http.aclose()
    await peer.close()


@pytest.mark.parametrize("setup", ["actpass", "active", "passive"])
async def test_websocket_echoes_video_and_data_whichever_dtls_role_is_offered(
    media: MediaProcess, setup: str, no_leaks: None
) -> None:
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client, video=True, data=True, setup=setup)
    assert await peer.echo(setup) == setup
    assert await peer.wait_frames(FRAMES) >= FRAMES
    await peer.close()
    await client.close()


async def test_an_offer_without_candidates_gets_the_service_candidates(media: MediaProcess, no_leaks: None) -> None:
    """OBS 30.2+ sends its offer before gathering and never trickles: the answer must carry the
    service's candidates, and the service must learn the client's address from its ICE checks."""
    peer = make_peer(video=True, data=False)
    sdp = without_candidates((await offer_sdp(peer))[0])
    assert "a=candidate" not in sdp
    http, location, answer = await whip_publish(media, peer, sdp)
    assert "a=candidate:" in answer
    assert await peer.wait_frames(FRAMES) >= FRAMES
    assert (await http.delete(location)).status_code == 200
    await http.aclose()
    await peer.close()


def answered_codecs(answer: str) -> set[str]:
    """The codec names in the answer's rtpmap lines: all the service may send back."""
    return set(re.findall(r"^a=rtpmap:\d+ ([\w-]+)/", answer, flags=re.MULTILINE))


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_the_echo_comes_back_in_the_codec_that_was_sent(media: MediaProcess, codec: str, no_leaks: None) -> None:
    peer = make_peer(video=True, data=False)
    (transceiver,) = peer.pc.getTransceivers()
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in capabilities if c.mimeType in (f"video/{codec}", "video/rtx")])
    sdp, _ = await offer_sdp(peer)
    http, location, answer = await whip_publish(media, peer, sdp)
    assert answered_codecs(answer) <= {codec, "rtx"} and codec in answered_codecs(answer)
    assert await peer.wait_frames(FRAMES) >= FRAMES
    assert (await http.delete(location)).status_code == 200
    await http.aclose()
    await peer.close()


async def test_opus_audio_is_echoed_as_opus(media: MediaProcess, no_leaks: None) -> None:
    peer = make_peer(video=False, data=False)
    peer.pc.addTrack(AudioStreamTrack())  # 20 ms frames of silence, encoded as Opus
    sdp, _ = await offer_sdp(peer)
    http, location, answer = await whip_publish(media, peer, sdp)
    assert "opus" in answered_codecs(answer)
    rtpmap = re.search(r"^m=audio \d+ \S+ (\d+)", answer, flags=re.MULTILINE)
    assert rtpmap is not None and f"a=rtpmap:{rtpmap.group(1)} opus/48000/2" in answer  # what it sends first
    assert await peer.wait_frames(50) >= 50  # a second of echoed audio, decoded
    assert (await http.delete(location)).status_code == 200
    await http.aclose()
    await peer.close()
