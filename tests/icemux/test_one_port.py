"""Media through one UDP port: the service runs in a namespace where every other UDP port is
dropped, and aiortc clients outside it connect, echo data and video, all through that port.
With the port off (a port per session, as aioice does), the same clients never connect."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aiortc import RTCSessionDescription

from tests.icemux.conftest import MUX_PORT, clients_on, service_in
from tests.support.netns import Namespace
from tests.support.peers import Peer, SignalingClient, make_peer, offer_sdp, open_session

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)
#: Sessions at once: data channels, and video echoes on two of them (two shared cores).
SESSIONS, VIDEO = 8, 2


async def test_concurrent_sessions_share_the_one_open_port(pod: Namespace, tmp_path: Path, no_leaks: None) -> None:
    async with service_in(pod, tmp_path, MUX_PORT) as media:
        with clients_on(pod.outside):
            clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(SESSIONS)]
            peers: list[Peer] = []
            try:
                peers = list(
                    await asyncio.gather(
                        *(open_session(client, video=i < VIDEO, connect_timeout=30) for i, client in enumerate(clients))
                    )
                )
                for peer in peers:
                    # The answer offers the one port, on the namespace's address, and nothing else.
                    assert set(CANDIDATE.findall(peer.pc.remoteDescription.sdp)) == {
                        (pod.inside, str(MUX_PORT), "host")
                    }
                for i, peer in enumerate(peers):
                    assert await peer.echo(f"through one port {i}") == f"through one port {i}"
                for peer in peers[:VIDEO]:
                    assert await peer.wait_frames(20, timeout=60) >= 20
                assert media.metric("media_ice_mux_sessions") == SESSIONS == media.metric("media_sessions_active")
                assert media.metric("media_ice_mux_addresses") == SESSIONS
                assert media.metric("media_ice_mux_claim_refusals_total", {"reason": "taken"}) == 0
            finally:
                for peer in peers:
                    await peer.close()
                for client in clients:
                    await client.close()
            media.poll_metric("media_sessions_active", lambda v: v == 0, timeout=30)
            media.poll_metric("media_ice_mux_sessions", lambda v: v == 0, timeout=30)
            assert media.metric("media_ice_mux_addresses") == 0
        # The firewall did drop UDP on other ports meanwhile: the clients' own checks to anything else.
        assert "drop" in pod.nft_list()


async def test_without_the_shared_port_the_same_clients_never_connect(
    pod: Namespace, tmp_path: Path, no_leaks: None
) -> None:
    """The negative control: aioice's port per session is dropped by the namespace's rules."""
    async with service_in(pod, tmp_path, 0) as media:
        with clients_on(pod.outside):
            client = await SignalingClient.connect(media.ws_url)
            peer = make_peer()
            try:
                sdp, _ = await offer_sdp(peer)
                await client.send({"type": "offer", "sdp": sdp})
                answer = await client.recv("answer")
                await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                ((address, port, kind),) = CANDIDATE.findall(answer["sdp"])
                assert (address, kind) == (pod.inside, "host") and int(port) != MUX_PORT
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(peer.connected.wait(), 10)
                assert peer.pc.connectionState != "connected"
            finally:
                await peer.close()
                await client.close()
            assert media.metric("media_ice_mux_sessions") == 0
