"""GStreamer's webrtcbin, unmodified (its own RSA DTLS certificate, ``a=setup:actpass``), publishes
VP8 and H.264 to the real service over WHIP and over the WebSocket protocol, and counts the decoded
frames echoed back (before the service took the DTLS server role, DTLS failed after ICE connected)."""

from __future__ import annotations

import pytest

from tests.support.gstreamer import GstPeer, require_gstreamer
from tests.support.media_process import MediaProcess, media_service, token
from tests.support.peers import SignalingClient

FRAMES = 30
#: Generous: two shared cores encode, decode and echo in three processes.
DEADLINE = 60
ENCODING = {"vp8": "VP8", "h264": "H264"}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    require_gstreamer()
    with media_service(tmp_path_factory.mktemp("gstreamer")) as media:
        yield media


def check(result: dict, codec: str, media: MediaProcess, *, audio: bool = False) -> None:
    assert result["error"] is None and result["frames"] >= FRAMES, f"{result}\n{media.log()[-2000:]}"
    assert not audio or result["audio_frames"] >= FRAMES, result
    expected = sorted([ENCODING[codec], *(["OPUS"] if audio else [])])
    assert result["received"] == expected, "the echo must come back in the codecs that were sent"


@pytest.mark.parametrize("trickle", [False, True], ids=["candidates-in-offer", "trickle"])
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_webrtcbin_publishes_over_whip(media: MediaProcess, codec: str, trickle: bool, no_leaks: None) -> None:
    args = ["--whip", f"{media.public_url}/whip", "--token", token("gst"), "--codec", codec, "--frames", str(FRAMES)]
    peer = await GstPeer.start(*args, "--timeout", str(DEADLINE), *(["--trickle"] if trickle else []))
    check(await peer.result(DEADLINE + 15), codec, media)
    media.poll_metric("media_sessions_active", lambda v: v == 0)  # its DELETE ended the session


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_webrtcbin_publishes_over_the_websocket(media: MediaProcess, codec: str, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url, user="gst")
    peer = await GstPeer.start("--stdio", "--codec", codec, "--frames", str(FRAMES), "--timeout", str(DEADLINE))
    try:
        offer = await peer.read("offer", 30)
        await client.send({"type": "offer", "sdp": offer["sdp"]})
        answer = await client.recv("answer", timeout=30)
        await peer.write({"type": "answer", "sdp": answer["sdp"]})
        check(await peer.result(DEADLINE + 15), codec, media)
    finally:
        await peer.close()
        await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_webrtcbin_publishes_h264_and_opus_over_whip(media: MediaProcess, no_leaks: None) -> None:
    """What OBS and FFmpeg publish: H.264 video and Opus audio."""
    args = ["--whip", f"{media.public_url}/whip", "--token", token("gst"), "--codec", "h264", "--audio"]
    peer = await GstPeer.start(*args, "--frames", str(FRAMES), "--timeout", str(DEADLINE))
    check(await peer.result(DEADLINE + 15), "h264", media, audio=True)
    media.poll_metric("media_sessions_active", lambda v: v == 0)
