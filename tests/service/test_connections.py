"""Connections bounded in number and in time, on the real process: one
client address cannot hold more than MEDIA_MAX_CONNECTIONS_PER_ADDRESS connections, and requests
that never complete (half-open headers, slow bodies) are cut at MEDIA_REQUEST_TIMEOUT."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from media_service.connections import forwarded_client
from tests.service.test_bounds import fds_of
from tests.support.media_process import MediaProcess, auth_header, media_service_async
from tests.support.peers import SignalingClient


def open_socket(media: MediaProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((media.host, media.port), timeout=5, source_address=(source, 0))
    sock.setblocking(False)
    return sock


def ended(sock: socket.socket) -> bool:
    """True once the server closed or reset the connection."""
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)


async def test_one_address_holds_at_most_its_share_of_connections(tmp_path: Path, no_leaks: None) -> None:
    """13,000 idle connections from one client took the process to 904 MB; now the 65th is closed
    at once, the process's descriptors stay bounded, and other addresses are still served."""
    async with media_service_async(tmp_path, env={"MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "64"}) as media:
        pid = media.proc.pid
        idle_fds = fds_of(pid)
        flood = [open_socket(media) for _ in range(300)]
        try:
            await asyncio.sleep(1)
            assert fds_of(pid) <= idle_fds + 64 + 5, f"fds {idle_fds} -> {fds_of(pid)}"
            closed = sum(ended(s) for s in flood)
            assert closed == 300 - 64
            assert await asyncio.to_thread(media.metric, "media_connections_refused_total", {"reason": "address"}) == (
                300 - 64
            )
            # Another address is not affected.
            other = await SignalingClient.connect(media.ws_url, local_addr=("127.0.0.2", 0))
            await other.send({"type": "ping"})
            assert (await other.recv("pong")) == {"type": "pong"}
            await other.close()
        finally:
            for s in flood:
                s.close()
        # Freed slots are usable again.
        await wait_until(lambda: media.metric("media_connections_open") == 0, 10, "connections released")
        client = await SignalingClient.connect(media.ws_url)
        await client.close()


async def test_requests_that_never_complete_are_cut(tmp_path: Path, no_leaks: None) -> None:
    """Half-open requests, unfinished WebSocket handshakes and slow WHIP bodies were still open
    after 45 s; now each is closed at MEDIA_REQUEST_TIMEOUT and its descriptor freed."""
    async with media_service_async(tmp_path, env={"MEDIA_REQUEST_TIMEOUT": "1"}) as media:
        pid = media.proc.pid
        idle_fds = fds_of(pid)
        silent = [open_socket(media) for _ in range(10)]
        half_headers = [open_socket(media) for _ in range(10)]
        handshakes = [open_socket(media) for _ in range(10)]
        slow_bodies = [open_socket(media) for _ in range(10)]
        for s in half_headers:
            s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for s in handshakes:
            s.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        for s in slow_bodies:
            s.send(b"POST /whip HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: 5000\r\n\r\n")
            s.send(b"v=0\r\n")
        every = silent + half_headers + handshakes + slow_bodies
        try:
            await wait_until(lambda: fds_of(pid) >= idle_fds + 35, 5, "the 40 accepted")
            await wait_until(lambda: all(ended(s) for s in every), 15, "every incomplete request cut")
            assert await asyncio.to_thread(media.metric, "media_connections_refused_total", {"reason": "timeout"}) == 40
            await wait_until(lambda: fds_of(pid) <= idle_fds, 10, "descriptors back to idle")
        finally:
            for s in every:
                s.close()
        # A client that completes its requests in time is not affected.
        client = await SignalingClient.connect(media.ws_url)
        await asyncio.sleep(1.5)  # an open WebSocket is past its handshake: no deadline
        await client.send({"type": "ping"})
        assert (await client.recv("pong")) == {"type": "pong"}
        await client.close()


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(tmp_path: Path, no_leaks: None) -> None:
    """The proxy (here 127.0.0.1) is exempt; each client it names in X-Forwarded-For has its own
    share, and entries left of the proxy's own cannot be used to dodge it."""
    env = {"MEDIA_TRUSTED_PROXIES": "127.0.0.1", "MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "3"}
    async with media_service_async(tmp_path, env=env) as media:
        held = []
        for i in range(3):
            held.append(await connect_forwarded(media, "203.0.113.9", f"a{i}"))
        for forged in ("203.0.113.9", "6.6.6.6, 203.0.113.9"):
            with pytest.raises(InvalidStatus) as refused:
                await connect_forwarded(media, forged, "x")
            assert refused.value.response.status_code == 429
        held.append(await connect_forwarded(media, "198.51.100.7", "b"))  # another client: its own share
        assert await asyncio.to_thread(media.metric, "media_connections_refused_total", {"reason": "address"}) == 2
        for ws in held:
            await ws.close()
        held = [await connect_forwarded(media, "203.0.113.9", f"c{i}") for i in range(3)]  # released on close
        for ws in held:
            await ws.close()


async def connect_forwarded(media: MediaProcess, forwarded: str, device: str):  # type: ignore[no-untyped-def]
    return await connect(
        f"{media.ws_url}?device={device}",
        additional_headers={**auth_header(), "X-Forwarded-For": forwarded},
    )


def test_forwarded_client_is_the_rightmost_untrusted_entry() -> None:
    trusted = frozenset({"10.0.0.1", "10.0.0.2"})
    assert forwarded_client("10.0.0.1", "1.1.1.1, 2.2.2.2, 10.0.0.2", trusted) == "2.2.2.2"
    assert forwarded_client("10.0.0.1", None, trusted) is None
    assert forwarded_client("9.9.9.9", "1.1.1.1", trusted) is None  # not a proxy: its own address counts
    assert forwarded_client("10.0.0.1", "10.0.0.2", trusted) is None
