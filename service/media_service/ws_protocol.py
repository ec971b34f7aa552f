"""uvicorn's WebSocket protocol, made able to drop a client that has stopped reading, and kept
alive by one timer for all connections instead of two timers each.

uvicorn's ``send`` waits until the transport is writable again before it writes anything, the
close frame included; for a client that never reads, that is never, and the connection (its
socket, its buffer, its handler task) would stay until TCP gives up. A close requested while the
socket no longer drains aborts the connection instead: the close frame could not reach that
client anyway, since it would sit behind the data the client is not reading.

Keepalive. uvicorn pings each WebSocket on a timer of its own and arms a second timer per ping
for the pong, then cancels it and schedules the next ping: for 500 idle signaling connections
that is 25 pings a second, each with two ``call_later``, a cancelled handle left in the loop's
timer heap for the whole timeout, and a wake-up of its own for the pong. Here ``Keepalive`` is
one timer per listener turning a wheel (``KeepaliveWheel``, pure): every connection sits in one
slot for its whole life and comes up once per ``KEEPALIVE_INTERVAL``. Coming up, it is pinged,
unless the previous ping is still unanswered, and then it is closed (1011) as uvicorn's pong
timeout does. So the bound is uvicorn's (20 s interval, 20 s timeout): a dead connection is
closed between one and two intervals after it stopped answering, plus at most one tick. The pings still
go out every interval, so proxies in between see traffic on an idle connection as before; the
pings of one tick leave together, and their pongs mostly come back in one wake-up.
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

#: Seconds between two pings of an idle WebSocket; a ping unanswered this long closes it (1011).
KEEPALIVE_INTERVAL = 20.0
#: Slots of the wheel: a ping leaves up to interval / slots (1 s) late, never early.
KEEPALIVE_SLOTS = 20


class Pinged(Protocol):
    def keepalive_due(self) -> None: ...


M = TypeVar("M")
P = TypeVar("P", bound=Pinged)


class KeepaliveWheel(Generic[M]):
    """Members spread over ``slots`` slots. Each ``turn()`` moves the hand one slot on and returns
    that slot's members, so a member comes up once every ``slots`` turns, the first time ``slots``
    turns after it was added (it joins the slot the hand is on). No clock, no loop."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a wheel needs at least one slot")
        self.slots = slots
        self._slots: list[dict[M, None]] = [{} for _ in range(slots)]
        self._where: dict[M, int] = {}
        self._hand = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, member: object) -> bool:
        return member in self._where

    def add(self, member: M) -> None:
        if member not in self._where:
            self._where[member] = self._hand
            self._slots[self._hand][member] = None

    def discard(self, member: M) -> None:
        slot = self._where.pop(member, None)
        if slot is not None:
            del self._slots[slot][member]

    def turn(self) -> list[M]:
        """The members due now: a copy, so they may leave the wheel while being served."""
        self._hand = (self._hand + 1) % self.slots
        return list(self._slots[self._hand])


class Keepalive(Generic[P]):
    """The keepalive of every WebSocket of one listener, on one loop timer that runs only while
    a connection is registered (an idle process without clients has no wake-ups for it)."""

    def __init__(self, interval: float = KEEPALIVE_INTERVAL, slots: int = KEEPALIVE_SLOTS) -> None:
        if interval <= 0:
            raise ValueError("the keepalive interval must be positive")
        self.interval = interval
        self.wheel: KeepaliveWheel[P] = KeepaliveWheel(slots)
        self.tick = interval / slots
        self._timer: asyncio.TimerHandle | None = None
        self._next_at = 0.0

    def __len__(self) -> int:
        return len(self.wheel)

    @property
    def running(self) -> bool:
        return self._timer is not None

    def add(self, member: P) -> None:
        self.wheel.add(member)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._next_at = loop.time() + self.tick
            self._timer = loop.call_at(self._next_at, self._turn, loop)

    def discard(self, member: P) -> None:
        self.wheel.discard(member)
        if not self.wheel and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        for member in self.wheel.turn():
            member.keepalive_due()  # may close the connection, which leaves the wheel
        if self.wheel:
            # On a fixed schedule; after a stall, one tick at once, never a burst to catch up.
            self._next_at = max(self._next_at + self.tick, loop.time())
            self._timer = loop.call_at(self._next_at, self._turn, loop)


class DroppingWebSocketProtocol(WebSocketsSansIOProtocol):
    """``keepalive`` is set per listener (``connections.limited_protocols``)."""

    keepalive: Keepalive[DroppingWebSocketProtocol]

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        # The wheel replaces uvicorn's ping and pong timers, whatever the config says: with no
        # ping timeout, uvicorn's send_keepalive_ping arms no pong timer and calls schedule_ping.
        self.ping_interval = None
        self.ping_timeout = None

    async def send(self, message):  # type: ignore[no-untyped-def]
        if message["type"] == "websocket.close" and not self.writable.is_set() and not self.disconnected:
            self.transport.abort()  # connection_lost() follows: the handler sees a disconnect
            return
        await super().send(message)

    def start_keepalive(self) -> None:
        self.keepalive.add(self)

    def stop_keepalive(self) -> None:
        self.keepalive.discard(self)
        super().stop_keepalive()

    def schedule_ping(self) -> None:
        pass  # the wheel brings the connection up again

    def keepalive_due(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        if self.pending_ping_payload is not None:  # a whole interval without the pong
            self.keepalive_timeout()
        else:
            self.send_keepalive_ping()
