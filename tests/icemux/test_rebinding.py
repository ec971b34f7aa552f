"""NAT rebinding on the shared port: a relay between client and service, standing for the
client's NAT, changes its source port mid-session.

What happens, and why: the client's next consent check arrives from the new port and is routed by
its ICE username, aioice answers it and checks the new address back, and the session claims the
new address, so what the client sends reaches the service again. But aioice, the controlled agent
here, keeps sending to the nominated pair's address, the old mapping, until the controlling
client nominates another pair, which a client that does not know its NAT rebound never does. The
service's media and consent checks go to the dead mapping, consent expires (RFC 7675: about 30 s
in aioice), aioice closes the connection and the service ends the session (reason ``closed``,
as aiortc reports it), while the client, whose own consent checks still pass, believes it is
connected until its signaling says ``bye``. A port per session behaves the same: the
mux neither causes nor cures it. The client reconnects (the service does not support ICE restart).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest
from aiortc import RTCSessionDescription

from tests.support.media_process import MediaProcess, media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp

HOST = "127.0.0.1"


class Relay(asyncio.DatagramProtocol):
    """Client-facing socket ``inner``; the service sees the ``outer`` one, which ``rebind`` replaces."""

    def __init__(self, service: tuple[str, int]) -> None:
        self.service = service
        self.client: tuple[str, int] | None = None
        self.inner: asyncio.DatagramTransport | None = None
        self.outer: asyncio.DatagramTransport | None = None

    async def open(self) -> int:
        loop = asyncio.get_running_loop()
        self.inner, _ = await loop.create_datagram_endpoint(lambda: _Side(self.from_client), local_addr=(HOST, 0))
        await self.rebind()
        return int(self.inner.get_extra_info("sockname")[1])

    async def rebind(self) -> int:
        loop = asyncio.get_running_loop()
        old = self.outer
        self.outer, _ = await loop.create_datagram_endpoint(lambda: _Side(self.from_service), local_addr=(HOST, 0))
        if old is not None:
            old.close()
        return int(self.outer.get_extra_info("sockname")[1])

    def from_client(self, data: bytes, address: tuple[str, int]) -> None:
        self.client = address
        if self.outer is not None:
            self.outer.sendto(data, self.service)

    def from_service(self, data: bytes, address: tuple[str, int]) -> None:
        if self.inner is not None and self.client is not None:
            self.inner.sendto(data, self.client)

    def close(self) -> None:
        for transport in (self.inner, self.outer):
            if transport is not None:
                transport.close()


class _Side(asyncio.DatagramProtocol):
    def __init__(self, forward) -> None:  # type: ignore[no-untyped-def]
        self.forward = forward

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.forward(data, addr)


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def poll(media: MediaProcess, name: str, predicate, timeout: float, labels=None) -> float:  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(media.poll_metric, name, predicate, timeout, labels)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_rebound_client_is_claimed_again_but_its_session_ends_when_consent_expires(
    tmp_path: Path, no_leaks: None
) -> None:
    port = udp_port()
    async with media_service_async(tmp_path, env={"MEDIA_ICE_UDP_PORT": str(port)}) as media:
        relay = Relay((HOST, port))
        relay_port = await relay.open()
        client = await SignalingClient.connect(media.ws_url)
        peer = make_peer()
        try:
            # The client's own candidates are held back: the service learns it from the relay only.
            sdp, _ = await offer_sdp(peer, trickle=True)
            await client.send({"type": "offer", "sdp": sdp})
            answer = await client.recv("answer")
            through_relay = re.sub(rf" {HOST} {port} typ host", f" {HOST} {relay_port} typ host", answer["sdp"])
            assert through_relay != answer["sdp"]
            await peer.pc.setRemoteDescription(RTCSessionDescription(through_relay, "answer"))
            await asyncio.wait_for(peer.channel_open.wait(), 30)
            assert await peer.echo("before") == "before"
            assert media.metric("media_ice_mux_addresses") == 1

            await relay.rebind()
            rebound_at = time.monotonic()
            # The next consent check from the new port is answered and the new address claimed.
            await poll(media, "media_ice_mux_addresses", lambda v: v == 2, 20)
            peer.channel.send("after")
            # Whatever the client sends is delivered again, but the service answers to the old mapping.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(peer.echoed.get(), 5)
            # Consent to the old mapping expires: aioice closes the connection, and the service the
            # session (aiortc reports a closed connection, hence the reason).
            await poll(media, "media_sessions_active", lambda v: v == 0, 60)
            assert 20 < time.monotonic() - rebound_at < 70
            bye = await client.recv("bye", session=answer["session"], timeout=10)
            assert bye["reason"] == "closed"
            assert media.metric("media_ice_mux_addresses") == 0 == media.metric("media_ice_mux_sessions")
            assert peer.pc.connectionState == "connected"  # the client's own consent checks still pass
        finally:
            await peer.close()
            await client.close()
            relay.close()
