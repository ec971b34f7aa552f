"""The shared ICE port under churn and abuse, on loopback: hundreds of sessions come and go and
leave nothing behind; floods of requests for unknown usernames or with a wrong password get no
answers or only 401s and do not disturb a live session."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from pathlib import Path

import pytest
from aioice import stun

from tests.support.media_process import FAST_LEAK_ENV, MediaProcess, media_service_async
from tests.support.peers import SignalingClient, open_session

#: Sessions opened and closed in all, and at once.
CHURN, AT_ONCE = 300, 12


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mux_env(port: int) -> dict[str, str]:
    return {
        **FAST_LEAK_ENV,
        "MEDIA_ICE_UDP_PORT": str(port),
        "MEDIA_MAX_SESSIONS_PER_USER": "100",
        "MEDIA_OFFER_RATE_PER_USER": "1000",
    }


def in_step(media: MediaProcess) -> None:
    """Every open session is on the shared port, and the port holds no one else."""
    assert media.metric("media_ice_mux_sessions") == media.metric("media_sessions_active")


async def one_round(media: MediaProcess, clients: list[SignalingClient], round_: int) -> None:
    peers = await asyncio.gather(*(open_session(client, connect_timeout=30) for client in clients))
    try:
        in_step(media)
        assert media.metric("media_sessions_active") == len(clients)
        for i, peer in enumerate(peers):
            assert await peer.echo(f"{round_}.{i}") == f"{round_}.{i}"
    finally:
        for peer, client in zip(peers, clients, strict=True):
            await client.send({"type": "bye", "session": peer.session})
            await peer.close()
    for peer, client in zip(peers, clients, strict=True):
        await client.recv("bye", session=peer.session, timeout=30)
    await asyncio.to_thread(media.poll_metric, "media_sessions_active", lambda v: v == 0, 30)
    in_step(media)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_hundreds_of_sessions_leave_the_port_empty(tmp_path: Path, no_leaks: None) -> None:
    port = udp_port()
    async with media_service_async(tmp_path, env=mux_env(port)) as media:
        clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(AT_ONCE)]
        try:
            await one_round(media, clients, 0)  # warm: what the first sessions open once (imports, pools)
            idle_fds = media.metric("process_open_fds")
            assert idle_fds is not None
            for round_ in range(1, CHURN // AT_ONCE):
                await one_round(media, clients, round_)
        finally:
            for client in clients:
                await client.close()
        assert media.metric("media_sessions_created_total") == CHURN
        assert media.metric("media_ice_mux_sessions") == 0 and media.metric("media_ice_mux_addresses") == 0
        assert media.metric("media_ice_mux_claim_refusals_total", {"reason": "taken"}) == 0
        # No orphaned task once the grace period has passed, and descriptors back to idle.
        await asyncio.to_thread(media.poll_metric, "media_asyncio_tasks", lambda v: v == 0, 20, {"owner": "closing"})
        assert media.metric("media_asyncio_tasks", {"owner": "orphaned"}) == 0
        await asyncio.to_thread(media.poll_metric, "process_open_fds", lambda v: v <= idle_fds, 20)
        assert media.metric("media_potential_goroutine_leak") == 0


def binding(username: str, key: bytes) -> stun.Message:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1
    message.attributes["ICE-CONTROLLING"] = 1
    message.add_message_integrity(key)
    message.add_fingerprint()
    return message


async def test_floods_get_no_answers_and_a_live_session_goes_on(tmp_path: Path, no_leaks: None) -> None:
    port = udp_port()
    async with media_service_async(tmp_path, env=mux_env(port)) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = await open_session(client)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        attacker.setblocking(False)
        try:
            (ufrag,) = set(re.findall(r"^a=ice-ufrag:(\S+)", peer.pc.remoteDescription.sdp, re.MULTILINE))
            addresses = media.metric("media_ice_mux_addresses")
            for i in range(500):  # bounded: unknown usernames, then the live one with a wrong password
                attacker.sendto(bytes(binding(f"unknown{i:09d}:x", os.urandom(22))), ("127.0.0.1", port))
            for _ in range(100):
                attacker.sendto(bytes(binding(f"{ufrag}:x", os.urandom(22))), ("127.0.0.1", port))
            last = binding(f"{ufrag}:x", os.urandom(22))
            attacker.sendto(bytes(last), ("127.0.0.1", port))
            # The port handles datagrams in order: once the last request's answer is here, every
            # earlier one has been handled, and whatever it caused has been sent.
            loop, answers = asyncio.get_running_loop(), []
            deadline = time.monotonic() + 10
            while not answers or answers[-1].transaction_id != last.transaction_id:
                data = await asyncio.wait_for(loop.sock_recv(attacker, 2048), max(0.01, deadline - time.monotonic()))
                answers.append(stun.parse_message(data))
            assert {(m.message_class, m.attributes["ERROR-CODE"][0]) for m in answers} == {(stun.Class.ERROR, 401)}
            assert len(answers) <= 101  # the kernel may drop some of a burst; none is answered twice
            assert media.metric("media_ice_mux_drops_total", {"reason": "unknown_username"}) == 500
            assert media.metric("media_ice_mux_addresses") == addresses  # the flood claimed nothing
            assert await peer.echo("undisturbed") == "undisturbed"
            assert peer.pc.connectionState == "connected"
        finally:
            attacker.close()
            await peer.close()
            await client.close()
