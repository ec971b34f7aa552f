"""Offers that cannot share the port: media sections not all on one BUNDLE transport get one ICE
transport each from aiortc, under one ufrag, which the port cannot tell apart. Refused with
bad_request by default; with MEDIA_ICE_UNBUNDLED=fallback the session binds ports of its own."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

from aiortc import RTCSessionDescription

from tests.support.media_process import media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unbundled(sdp: str) -> str:
    return re.sub(r"^a=group:BUNDLE .*\r?\n", "", sdp, flags=re.MULTILINE)


async def test_an_unbundled_offer_is_refused_or_falls_back_as_configured(tmp_path: Path, no_leaks: None) -> None:
    port = udp_port()
    (tmp_path / "refuse").mkdir()
    async with media_service_async(tmp_path / "refuse", env={"MEDIA_ICE_UDP_PORT": str(port)}) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = make_peer(video=True)
        try:
            sdp, _ = await offer_sdp(peer)
            assert "a=group:BUNDLE" in sdp
            await client.send({"type": "offer", "sdp": unbundled(sdp)})
            error = await client.recv("error")
            assert error["code"] == "bad_request" and "BUNDLE" in error["message"], error
            assert media.metric("media_sessions_rejected_total", {"code": "bad_request"}) == 1
            # The same offer bundled shares the port.
            await client.send({"type": "offer", "sdp": sdp})
            answer = await client.recv("answer")
            assert {p for _, p, _ in CANDIDATE.findall(answer["sdp"])} == {str(port)}
        finally:
            await peer.close()
            await client.close()

    (tmp_path / "fallback").mkdir()
    env = {"MEDIA_ICE_UDP_PORT": str(port), "MEDIA_ICE_UNBUNDLED": "fallback"}
    async with media_service_async(tmp_path / "fallback", env=env) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = make_peer(video=True)
        try:
            sdp, _ = await offer_sdp(peer)
            await client.send({"type": "offer", "sdp": unbundled(sdp)})
            answer = await client.recv("answer")
            ports = {p for _, p, _ in CANDIDATE.findall(answer["sdp"])}
            assert ports and str(port) not in ports  # its own ports, one per transport
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await asyncio.wait_for(peer.connected.wait(), 30)  # on loopback, nothing blocks its ports
            assert await peer.wait_frames(5, timeout=30) >= 5  # the video echo, on the video's own transport
            assert media.metric("media_ice_mux_fallbacks_total") == 1
            assert media.metric("media_ice_mux_sessions") == 0 and media.metric("media_sessions_active") == 1
        finally:
            await peer.close()
            await client.close()
        media.poll_metric("media_sessions_active", lambda v: v == 0)
