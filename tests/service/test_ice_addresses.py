"""Client candidates cannot aim the server's connectivity checks: no STUN
packet towards loopback, link-local, cloud-metadata or (when told) private addresses, each
refusal counted in media_ice_candidates_refused_total{reason}."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.media_process import media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp


@pytest.fixture
def victim() -> Iterator[socket.socket]:
    """A UDP port on loopback standing for a service the pod must not probe; counts what it gets."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def received(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def candidate(address: str, port: int) -> dict[str, object]:
    return {"candidate": f"candidate:1 1 udp 2130706431 {address} {port} typ host", "sdpMid": "0"}


async def offer_with_candidates(client: SignalingClient, candidates: list[dict[str, object]]) -> None:
    peer = make_peer()
    await client.send({"type": "offer", "sdp": (await offer_sdp(peer, trickle=True))[0]})  # only these candidates
    session = (await client.recv("answer"))["session"]
    for c in candidates:
        await client.send({"type": "candidate", "session": session, "candidate": c})
    await peer.close()


async def test_checks_never_go_to_loopback_link_local_metadata_or_private(
    tmp_path: Path, victim: socket.socket, no_leaks: None
) -> None:
    port = victim.getsockname()[1]
    env = {"MEDIA_ICE_ALLOW_LOOPBACK": "0", "MEDIA_ICE_ALLOW_PRIVATE": "0"}
    async with media_service_async(tmp_path, env=env) as media:
        client = await SignalingClient.connect(media.ws_url)
        targets = [
            ("127.0.0.1", port),
            ("127.0.0.2", port),
            ("::ffff:127.0.0.1", port),
            ("169.254.169.254", 80),
            ("fd00:ec2::254", 80),
            ("fe80::1", 9),
            ("169.254.1.1", 9),
            ("10.0.0.1", 9),
            ("192.168.1.1", 9),
            ("0.0.0.0", 9),
        ]
        await offer_with_candidates(client, [candidate(a, p) for a, p in targets])
        refused = {
            reason: await asyncio.to_thread(
                media.poll_metric, "media_ice_candidates_refused_total", lambda v: v > 0, labels={"reason": reason}
            )
            for reason in ("loopback", "metadata", "link_local", "private", "unroutable")
        }
        assert refused == {"loopback": 3, "metadata": 2, "link_local": 2, "private": 2, "unroutable": 1}
        await asyncio.sleep(3)  # ICE checks go out every 20 ms: none may reach the victim
        assert received(victim) == 0
        await client.close()


async def test_allowed_loopback_is_checked(tmp_path: Path, victim: socket.socket, no_leaks: None) -> None:
    """The control: the same candidate with loopback allowed (as in the rest of the suite) does
    get STUN checks, so the test above would see them."""
    async with media_service_async(tmp_path) as media:
        client = await SignalingClient.connect(media.ws_url)
        await offer_with_candidates(client, [candidate("127.0.0.1", victim.getsockname()[1])])
        packets = 0
        for _ in range(100):
            packets += received(victim)
            if packets:
                break
            await asyncio.sleep(0.1)
        assert packets > 0
        assert media.metric("media_ice_candidates_refused_total", {"reason": "loopback"}) == 0
        await client.close()
