"""GStreamer's webrtcbin through one UDP port: it publishes H.264 and Opus over WHIP (two media
sections on one BUNDLE transport, as OBS and FFmpeg do) to the service in a namespace where every
other UDP port is dropped, gathering on the namespace's link only, and gets both echoed back."""

from __future__ import annotations

from pathlib import Path

from tests.icemux.conftest import MUX_PORT, service_in
from tests.support.gstreamer import GstPeer, require_gstreamer
from tests.support.media_process import token
from tests.support.netns import Namespace

FRAMES = 30
DEADLINE = 60


async def test_webrtcbin_publishes_h264_and_opus_through_the_one_port(
    pod: Namespace, tmp_path: Path, no_leaks: None
) -> None:
    require_gstreamer()
    async with service_in(pod, tmp_path, MUX_PORT) as media:
        args = ["--whip", f"{media.public_url}/whip", "--token", token("gst"), "--codec", "h264", "--audio"]
        peer = await GstPeer.start(
            *args, "--local-address", pod.outside, "--frames", str(FRAMES), "--timeout", str(DEADLINE)
        )
        result = await peer.result(DEADLINE + 15)
        assert result["error"] is None and result["frames"] >= FRAMES, f"{result}\n{media.log()[-2000:]}"
        assert result["audio_frames"] >= FRAMES and result["received"] == ["H264", "OPUS"], result
        assert media.metric("media_ice_mux_fallbacks_total") == 0
        assert media.metric("media_ice_mux_drops_total", {"reason": "unknown_username"}) == 0
        media.poll_metric("media_sessions_active", lambda v: v == 0)  # its DELETE ended the session
        media.poll_metric("media_ice_mux_sessions", lambda v: v == 0)
