"""The WebSocket keepalive: one wheel and one timer for every connection of a listener.

The wheel is pure and tested by turning it. The uvicorn internals the protocol overrides are
named in one test, so an upgrade that moves one fails here. Then real uvicorn listeners on
loopback with a short interval, and raw clients whose pongs the test controls: a client that
answers stays, one that stops answering is closed with 1011 within the documented bound.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from media_service.connections import ConnectionLimiter, limited_protocols
from media_service.ws_protocol import KEEPALIVE_INTERVAL, DroppingWebSocketProtocol, Keepalive, KeepaliveWheel

INTERVAL = 0.4
SLOTS = 4
TICK = INTERVAL / SLOTS

OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


async def until(condition: Callable[[], object], timeout: float) -> None:
    """Poll ``condition`` until it holds; a test that waits longer than ``timeout`` fails."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ the wheel, pure


def test_a_member_comes_up_one_full_turn_after_it_joins_and_then_once_every_turn() -> None:
    wheel: KeepaliveWheel[str] = KeepaliveWheel(4)
    wheel.add("a")
    wheel.turn()
    wheel.add("b")  # one slot later than a
    seen = [wheel.turn() for _ in range(9)]
    assert [i for i, due in enumerate(seen) if "a" in due] == [2, 6]
    assert [i for i, due in enumerate(seen) if "b" in due] == [3, 7]
    assert len(wheel) == 2


def test_members_joining_between_turns_spread_over_the_slots() -> None:
    wheel: KeepaliveWheel[int] = KeepaliveWheel(5)
    for n in range(20):
        wheel.add(n)
        if n % 4 == 3:
            wheel.turn()
    sizes = [len(wheel.turn()) for _ in range(5)]
    assert sizes == [4, 4, 4, 4, 4]


def test_a_discarded_member_never_comes_up_again_and_discarding_twice_is_harmless() -> None:
    wheel: KeepaliveWheel[str] = KeepaliveWheel(2)
    wheel.add("a")
    wheel.add("b")
    wheel.discard("a")
    wheel.discard("a")
    assert [wheel.turn() for _ in range(4)] == [[], ["b"], [], ["b"]]
    assert "a" not in wheel and "b" in wheel


def test_adding_a_member_twice_keeps_its_slot() -> None:
    wheel: KeepaliveWheel[str] = KeepaliveWheel(3)
    wheel.add("a")
    wheel.turn()
    wheel.add("a")
    assert [("a" in wheel.turn()) for _ in range(3)] == [False, True, False]


def test_members_may_leave_while_their_slot_is_served() -> None:
    wheel: KeepaliveWheel[str] = KeepaliveWheel(1)
    for name in "abc":
        wheel.add(name)
    due = wheel.turn()
    for name in due:
        wheel.discard(name)
    assert due == ["a", "b", "c"] and len(wheel) == 0


def test_a_wheel_needs_a_slot_and_a_keepalive_a_positive_interval() -> None:
    with pytest.raises(ValueError):
        KeepaliveWheel(0)
    with pytest.raises(ValueError):
        Keepalive(0)


# ------------------------------------------------------------------------------ the timer


class Member:
    def __init__(self, keepalive: Keepalive[Any], leave_after: int = 0) -> None:
        self.keepalive = keepalive
        self.due: list[float] = []
        self.leave_after = leave_after

    def keepalive_due(self) -> None:
        self.due.append(time.monotonic())
        if self.leave_after and len(self.due) >= self.leave_after:
            self.keepalive.discard(self)


async def test_one_timer_brings_every_member_up_once_an_interval_and_stops_with_the_last() -> None:
    keepalive: Keepalive[Member] = Keepalive(INTERVAL, SLOTS)
    assert not keepalive.running
    members = [Member(keepalive, leave_after=3) for _ in range(10)]
    start = time.monotonic()
    for member in members:
        keepalive.add(member)
    assert keepalive.running and len(keepalive) == 10
    await until(lambda: not keepalive.running, 10 * INTERVAL)  # each leaves after its third
    for member in members:
        assert len(member.due) == 3
        first, *rest = member.due
        assert INTERVAL - TICK - 0.02 <= first - start <= INTERVAL + 0.1
        gaps = [b - a for a, b in zip(member.due, rest, strict=False)]
        assert all(INTERVAL - 0.05 <= gap <= INTERVAL + 0.1 for gap in [rest[0] - first, *gaps])
    assert len(keepalive) == 0 and not keepalive.running  # no wake-ups without connections


async def test_the_timer_stops_when_the_last_member_is_discarded_and_restarts_with_a_new_one() -> None:
    keepalive: Keepalive[Member] = Keepalive(INTERVAL, SLOTS)
    member = Member(keepalive)
    keepalive.add(member)
    keepalive.discard(member)
    assert not keepalive.running
    await asyncio.sleep(1.5 * INTERVAL)
    assert member.due == []
    keepalive.add(member)
    await until(lambda: member.due, 5 * INTERVAL)
    keepalive.discard(member)
    assert len(member.due) == 1 and not keepalive.running


def test_the_service_pings_every_20_seconds() -> None:
    """The documented bound (docs/configuration.md): 20 s between pings, closed after one unanswered."""
    assert KEEPALIVE_INTERVAL == 20.0


# ------------------------------------------------------------------------------ uvicorn's internals


def test_the_uvicorn_internals_the_keepalive_overrides() -> None:
    sansio = WebSocketsSansIOProtocol
    # Started once the handshake is sent, stopped on connection lost and on shutdown.
    assert "self.start_keepalive()" in inspect.getsource(sansio.send)
    assert "self.stop_keepalive()" in inspect.getsource(sansio.connection_lost)
    assert "self.stop_keepalive()" in inspect.getsource(sansio.shutdown)
    # A ping records its payload; with no ping timeout it arms no pong timer, only schedule_ping.
    ping = inspect.getsource(sansio.send_keepalive_ping)
    assert "self.pending_ping_payload =" in ping and "self.conn.send_ping(" in ping
    assert "if self.ping_timeout is not None:" in ping and "self.schedule_ping()" in ping
    # The matching pong clears the payload; a timeout fails the connection with 1011.
    assert "self.pending_ping_payload = None" in inspect.getsource(sansio.handle_pong)
    assert "1011" in inspect.getsource(sansio.keepalive_timeout)
    assert "self.pending_ping_payload = None" in inspect.getsource(sansio.stop_keepalive)


# ------------------------------------------------------------------------------ real listeners


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


@pytest.fixture
async def listener(no_leaks: None) -> AsyncIterator[tuple[int, Keepalive[DroppingWebSocketProtocol]]]:
    keepalive: Keepalive[DroppingWebSocketProtocol] = Keepalive(INTERVAL, SLOTS)
    http, ws = limited_protocols(
        ConnectionLimiter(100, 100), 10.0, on_refused=lambda _: None, on_timeout=lambda: None, keepalive=keepalive
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # uvicorn's own keepalive settings on, to show the wheel replaces them rather than adds to them.
    config = uvicorn.Config(app, http=http, ws=ws, lifespan="off", log_config=None, ws_ping_interval=0.05)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started, 10)
    try:
        yield sock.getsockname()[1], keepalive
    finally:
        server.should_exit = True
        await task
        sock.close()
    assert not keepalive.running and len(keepalive) == 0


class RawClient:
    """A WebSocket client on a bare socket: it answers pings only while ``answering``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.answering = True
        self.pings: list[float] = []
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(2)
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                payload = await self.reader.readexactly(length)  # control frames: < 126 bytes
                if opcode == OP_PING:
                    self.pings.append(time.monotonic())
                    if self.answering:
                        self._send(OP_PONG, payload)
                elif opcode == OP_CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_at = time.monotonic()

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def close(self) -> None:
        self.writer.close()
        await asyncio.wait_for(self._task, 5)
        await self.writer.wait_closed()


async def test_a_client_that_answers_is_pinged_once_an_interval_and_stays(
    listener: tuple[int, Keepalive[DroppingWebSocketProtocol]],
) -> None:
    port, keepalive = listener
    clients = [await RawClient.connect(port) for _ in range(5)]
    assert len(keepalive) == 5 and keepalive.running
    await until(lambda: all(len(client.pings) >= 4 for client in clients), 20 * INTERVAL)
    for client in clients:
        assert client.closed_at is None
        assert len(client.pings) == 4  # not uvicorn's 0.05 s: its timers are off
        gaps = [b - a for a, b in zip(client.pings, client.pings[1:], strict=False)]
        assert all(INTERVAL - 0.05 <= gap <= INTERVAL + 0.1 for gap in gaps)
    for client in clients:
        await client.close()
    await until(lambda: not keepalive.running, 1.0)
    assert len(keepalive) == 0 and not keepalive.running


async def test_a_client_that_stops_answering_is_closed_with_1011_within_two_intervals(
    listener: tuple[int, Keepalive[DroppingWebSocketProtocol]],
) -> None:
    port, keepalive = listener
    alive, silent = await RawClient.connect(port), await RawClient.connect(port)
    await asyncio.sleep(1.5 * INTERVAL)  # both answered one ping
    assert len(silent.pings) == 1
    silent.answering = False
    stopped = time.monotonic()
    await until(lambda: silent.closed_at is not None, 5 * INTERVAL)
    assert silent.close_code == 1011 and silent.closed_at is not None
    assert INTERVAL - TICK < silent.closed_at - stopped <= 2 * INTERVAL + 2 * TICK
    assert len(silent.pings) == 2  # the unanswered ping, then the close: no third ping
    assert alive.closed_at is None and alive.close_code is None
    await until(lambda: len(keepalive) == 1, 1.0)  # the server sees the connection go after the client
    assert len(keepalive) == 1
    await alive.close()
    await silent.close()
