"""Connections bounded in number and in time, on the public listener.

An idle WebSocket costs about 66 KiB and uvicorn accepts as many as the kernel hands it: 13,000
from one client took the process to 904 MB. Nor does uvicorn time out a request that never
completes: half-open requests, handshakes and slow bodies stayed open indefinitely. So:

* ``ConnectionLimiter`` (pure, no I/O) counts open connections per process and per client
  address. A connection over either cap is closed as soon as it is accepted, before any byte is
  read. The addresses of trusted proxies (``MEDIA_TRUSTED_PROXIES``) carry many clients and are
  counted only in the process total.
* ``limited_protocols`` gives uvicorn's h11 HTTP protocol and this service's WebSocket protocol
  the limiter, and the HTTP one a deadline: from the moment a connection is accepted, or has had
  its last response, a whole request (headers and body, a WebSocket upgrade included) must arrive
  within ``request_timeout``, or the connection is aborted. Idle keep-alive connections are
  uvicorn's own ``timeout_keep_alive``.

The transport is what is counted: uvicorn hands it from the HTTP protocol to the WebSocket one on
an upgrade, so both release it, once, when it is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from media_service.ws_protocol import DroppingWebSocketProtocol, Keepalive


class ConnectionLimiter:
    def __init__(self, max_total: int, max_per_address: int, exempt: Iterable[str] = ()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._exempt = frozenset(exempt)
        self._open: dict[object, str] = {}  # transport → its client address
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, key: object, address: str) -> str | None:
        """Count a new connection; or the reason it is refused (``process`` or ``address``)."""
        if len(self._open) >= self.max_total:
            return "process"
        if address not in self._exempt and self._per_address.get(address, 0) >= self.max_per_address:
            return "address"
        self._open[key] = address
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return None

    def release(self, key: object) -> None:
        """Idempotent: the HTTP and the WebSocket protocol of one connection both call it."""
        address = self._open.pop(key, None)
        if address is None:
            return
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]


def forwarded_client(peer: str | None, forwarded_for: str | None, trusted: frozenset[str]) -> str | None:
    """The client behind trusted proxies: the rightmost X-Forwarded-For entry that is not a
    trusted proxy. None when the peer is not a trusted proxy (its own address is then counted on
    accept) or the header names no one; entries left of the first untrusted one could be forged."""
    if peer is None or peer not in trusted or not forwarded_for:
        return None
    for entry in reversed([part.strip() for part in forwarded_for.split(",")]):
        if entry and entry not in trusted:
            return entry[:64]
    return None


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def limited_protocols(
    limiter: ConnectionLimiter,
    request_timeout: float,
    on_refused: Callable[[str], None],
    on_timeout: Callable[[], None],
    keepalive: Keepalive[DroppingWebSocketProtocol] | None = None,
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn's ``http`` and ``ws`` settings; the
    WebSockets share ``keepalive`` (a new one by default)."""
    shared_keepalive: Keepalive[DroppingWebSocketProtocol] = Keepalive() if keepalive is None else keepalive

    class LimitedWebSocketProtocol(DroppingWebSocketProtocol):
        keepalive = shared_keepalive

        def connection_lost(self, exc: Exception | None) -> None:
            limiter.release(self.transport)
            super().connection_lost(exc)

    class LimitedHttpProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _armed_cycle: Any = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            reason = limiter.admit(transport, _address(transport))
            if reason is not None:
                self._refused = True
                on_refused(reason)
                transport.abort()  # connection_lost follows; nothing was read or counted
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm()
            limiter.release(self.transport)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._refused:
                super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request on this connection gets a deadline of its own

        def _arm(self) -> None:
            self._disarm()
            self._armed_cycle = self.cycle
            self._deadline = self.loop.call_later(request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # closed, or upgraded to a WebSocket: no longer ours to time
            cycle: Any = self.cycle
            if cycle is self._armed_cycle or cycle.more_body:  # no new request yet, or its body still coming
                on_timeout()
                self.transport.abort()

    return LimitedHttpProtocol, LimitedWebSocketProtocol
