"""A hostPort whose port differs from the bound one: inside the namespace a DNAT rule forwards
the published port to the service's, as the CNI's portmap does for a hostPort, and the bound port
cannot be reached directly. The service announces the published port
(MEDIA_ICE_ANNOUNCED_ADDRESSES=address:port) and sessions connect through it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.icemux.conftest import MUX_PORT, clients_on, service_in
from tests.support.netns import Namespace
from tests.support.peers import SignalingClient, open_session

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)
PUBLISHED = 30478


def counter(ruleset: str, rule: str) -> int:
    """Packets counted by the rule containing ``rule``."""
    match = re.search(re.escape(rule) + r" counter packets (\d+)", ruleset)
    assert match, ruleset
    return int(match.group(1))


async def test_sessions_connect_through_a_published_port_that_differs(
    pod: Namespace, tmp_path: Path, no_leaks: None
) -> None:
    pod.host_port(PUBLISHED, MUX_PORT)
    announced = {"MEDIA_ICE_ANNOUNCED_ADDRESSES": f"{pod.inside}:{PUBLISHED}"}
    async with service_in(pod, tmp_path, MUX_PORT, **announced) as media:
        with clients_on(pod.outside):
            clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(3)]
            peers = []
            try:
                for client in clients:
                    peers.append(await open_session(client, video=False, connect_timeout=30))
                for i, peer in enumerate(peers):
                    assert set(CANDIDATE.findall(peer.pc.remoteDescription.sdp)) == {
                        (pod.inside, str(PUBLISHED), "host")
                    }
                    assert await peer.echo(f"published {i}") == f"published {i}"
                assert media.metric("media_ice_mux_sessions") == 3
            finally:
                for peer in peers:
                    await peer.close()
                for client in clients:
                    await client.close()
            media.poll_metric("media_ice_mux_sessions", lambda v: v == 0, timeout=30)
    ruleset = pod.nft_list()
    assert counter(ruleset, f"udp dport {PUBLISHED}") > 0  # everything came through the published port
