"""Who gets which datagram on the shared port: parsing the little of STUN that routing needs, and
the routing table, by ufrag, by transaction id and by claimed address. Plain logic, no I/O."""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Addresses one session may hold: a client's host, reflexive and relayed paths, and a rebinding.
MAX_ADDRESSES = 8
#: Seconds a sent request's transaction id routes responses (aioice gives up after about 40 s).
TRANSACTION_TTL = 60.0
#: Why a datagram was dropped (media_ice_mux_drops_total{reason}).
DROP_REASONS = (
    "unknown_username",  # a request for no joined session's ufrag: never answered
    "unknown_address",  # DTLS/SRTP (or an indication) from an address no session claimed
    "unknown_transaction",  # a response to no request a session sent
    "malformed",  # a STUN header whose request carries no USERNAME, or a bad length
    "send_buffer",  # the socket's send buffer was full (EAGAIN)
    "send_error",  # the kernel refused the send (unreachable, filtered)
)
#: Why a session could not claim an address (media_ice_mux_claim_refusals_total{reason}).
CLAIM_REFUSAL_REASONS = ("taken", "address_limit")

_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
BINDING_SUCCESS = 0x0101
_USERNAME = 0x0006

Address = tuple[str, int]


class MuxError(Exception):
    """A session cannot join the mux (its ufrag is taken)."""


@dataclass
class MuxCounters:
    """Where the mux reports; the service wires these to its metrics, unit tests to lists."""

    dropped: Callable[[str], None] = lambda reason: None
    refused: Callable[[str], None] = lambda reason: None
    receive_buffer_errors: Callable[[int], None] = lambda count: None


# Parsing: only the header and USERNAME, in the reader's hot path. aioice parses the rest again.


def stun_kind(data: bytes) -> tuple[int, bytes] | None:
    """(message type, transaction id) of a STUN message, None for anything else (RFC 7983:
    STUN's first byte is 0-3, and RFC 5389's magic cookie follows the length)."""
    if len(data) < 20 or data[0] > 3 or data[4:8] != _MAGIC_COOKIE:
        return None
    return (data[0] << 8) | data[1], data[8:20]


def stun_class(message_type: int) -> int:
    """0 request, 1 indication, 2 success response, 3 error response."""
    return ((message_type >> 7) & 0x2) | ((message_type >> 4) & 0x1)


def local_ufrag(data: bytes) -> str | None:
    """The local part of a request's USERNAME ("local:remote"), None if there is none."""
    length = struct.unpack_from("!H", data, 2)[0]
    end = min(len(data), 20 + length)
    offset = 20
    while offset + 4 <= end:
        kind, size = struct.unpack_from("!HH", data, offset)
        if kind == _USERNAME:
            value = data[offset + 4 : offset + 4 + size]
            local, colon, _ = value.partition(b":")
            return local.decode("ascii", "replace") if colon else None
        offset += 4 + size + (-size % 4)
    return None


class Route:
    """What the table knows of one joined session on one socket."""

    def __init__(self, ufrag: str) -> None:
        self.ufrag = ufrag
        self.addresses: set[Address] = set()
        self.transactions: set[bytes] = set()
        self.joined = False


class RoutingTable:
    """Who gets which datagram: by ufrag, by transaction id, by claimed address. No I/O; the
    clock is injected so that the transaction expiry is unit-tested."""

    def __init__(
        self,
        counters: MuxCounters | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
        transaction_ttl: float = TRANSACTION_TTL,
    ) -> None:
        self.counters = counters or MuxCounters()
        self._clock = clock
        self._max_addresses = max_addresses
        self._transaction_ttl = transaction_ttl
        self._by_ufrag: dict[str, Route] = {}
        self._by_address: dict[Address, Route] = {}
        self._by_transaction: dict[bytes, Route] = {}
        self._transaction_expiry: OrderedDict[bytes, float] = OrderedDict()  # oldest first
        self._confirmed: set[Address] = set()  # claims proven by an answer from the address

    @property
    def sessions(self) -> int:
        return len(self._by_ufrag)

    @property
    def addresses(self) -> int:
        return len(self._by_address)

    @property
    def transactions(self) -> int:
        return len(self._by_transaction)

    def is_empty(self) -> bool:
        return not (self._by_ufrag or self._by_address or self._by_transaction)

    def join(self, route: Route) -> None:
        if route.ufrag in self._by_ufrag:
            raise MuxError(f"ICE ufrag {route.ufrag!r} is taken on this port")
        self._by_ufrag[route.ufrag] = route
        route.joined = True

    def leave(self, route: Route) -> None:
        """Forget everything the route registered."""
        if not route.joined:
            return
        route.joined = False
        if self._by_ufrag.get(route.ufrag) is route:
            del self._by_ufrag[route.ufrag]
        for address in route.addresses:
            if self._by_address.get(address) is route:
                del self._by_address[address]
                self._confirmed.discard(address)
        route.addresses.clear()
        for txid in route.transactions:
            if self._by_transaction.get(txid) is route:
                del self._by_transaction[txid]
                self._transaction_expiry.pop(txid, None)
        route.transactions.clear()

    def for_request(self, ufrag: str) -> Route | None:
        return self._by_ufrag.get(ufrag)

    def for_address(self, address: Address) -> Route | None:
        return self._by_address.get(address)

    def for_response(self, txid: bytes) -> Route | None:
        """The route that sent this transaction. Kept after a response (a forged one must not make
        the real one be dropped); transaction ids expire instead."""
        return self._by_transaction.get(txid)

    def expect(self, route: Route, txid: bytes) -> None:
        """The route sent a request: its responses come back by this transaction id."""
        if not route.joined:
            return
        now = self._clock()
        self._expire(now)
        self._by_transaction[txid] = route
        route.transactions.add(txid)
        self._transaction_expiry[txid] = now + self._transaction_ttl
        self._transaction_expiry.move_to_end(txid)

    def claim(self, route: Route, address: Address, *, confirmed: bool = False) -> bool:
        """Give ``address`` to the route after an authenticated exchange; False (counted) if
        another session holds it (unless this claim is confirmed and that one was not), or the
        route holds enough already. ``confirmed``: the address itself answered the route's check."""
        if not route.joined:
            return False
        holder = self._by_address.get(address)
        if holder is route:
            if confirmed:
                self._confirmed.add(address)
            return True
        if holder is not None and (not confirmed or address in self._confirmed):
            self.counters.refused("taken")
            return False
        if len(route.addresses) >= self._max_addresses:
            self.counters.refused("address_limit")
            return False
        if holder is not None:  # a tentative claim, perhaps from a spoofed source, yields
            holder.addresses.discard(address)
        self._by_address[address] = route
        route.addresses.add(address)
        if confirmed:
            self._confirmed.add(address)
        return True

    def _expire(self, now: float) -> None:
        while self._transaction_expiry:
            txid, deadline = next(iter(self._transaction_expiry.items()))
            if deadline > now:
                break
            del self._transaction_expiry[txid]
            route = self._by_transaction.pop(txid, None)
            if route is not None:
                route.transactions.discard(txid)
