"""TURN beside the shared port: with a TURN server configured, the service still gathers a relay
candidate, on a socket of its own to the TURN server, next to the shared port's host candidate.
Here the service runs in a namespace where UDP passes only to and from the TURN server's port, so
the shared port is out of reach: a session connects through the relay alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.icemux.conftest import MUX_PORT, clients_on, service_in
from tests.support.netns import namespace
from tests.support.peers import SignalingClient, open_session
from tests.support.turn import turn_server

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.MULTILINE)


async def test_a_turn_relay_works_beside_the_shared_port(tmp_path: Path, no_leaks: None) -> None:
    with namespace() as pod, turn_server(tmp_path, pod.outside) as turn:
        pod.udp_only_through(turn.port)  # the TURN server's port: not the shared one
        ice = {"MEDIA_ICE_SERVERS": json.dumps([turn.ice_server()])}
        async with service_in(pod, tmp_path, MUX_PORT, **ice) as media:
            with clients_on(pod.outside):
                client = await SignalingClient.connect(media.ws_url)
                peer = None
                try:
                    peer = await open_session(client, connect_timeout=30)
                    candidates = {
                        (kind, int(port)) for _, port, kind in CANDIDATE.findall(peer.pc.remoteDescription.sdp)
                    }
                    assert ("host", MUX_PORT) in candidates and any(kind == "relay" for kind, _ in candidates)
                    assert await peer.echo("relayed") == "relayed"
                    assert media.metric("media_ice_mux_sessions") == 1
                    assert media.metric("media_ice_mux_addresses") == 0  # nothing came through the port
                finally:
                    if peer is not None:
                        await peer.close()
                    await client.close()
                media.poll_metric("media_ice_mux_sessions", lambda v: v == 0)
