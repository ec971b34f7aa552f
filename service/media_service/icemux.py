"""One UDP port for every session's ICE: the sessions share one socket per bound address.

aioice binds a new random port for every session, so a pod would need the host network and a
wide-open port range. Here every session's host candidate is the same port, and datagrams are
demultiplexed as the field does it (pion's UDPMux, Jitsi's port 10000, mediasoup's WebRtcServer),
with mediasoup's stricter rules:

- a STUN request goes to the session named by the local ufrag in its USERNAME ("local:remote"),
  whatever address it comes from; an unknown ufrag gets no answer (no reflection);
- a STUN response goes to the session that sent the request (its transaction id): every session
  may ask the same STUN server, so the address cannot tell them apart;
- everything else (DTLS, SRTP) goes to the session that claimed the source address. A session
  claims an address only after an authenticated exchange: it answered an integrity-checked
  Binding request with a success (a tentative claim: the request's source could be spoofed), or
  it got an integrity-valid success to its own check from there (a confirmed claim: the address
  answered). A tentative claim never takes an address from another session; a confirmed one takes
  it only from a tentative holder, so a spoofing client cannot hold addresses hostage. A session
  holds at most ``MAX_ADDRESSES``.

aioice is not forked: ``MuxConnection`` replaces aiortc's ``Connection`` and, for a session that
joins the mux, puts a ``MuxTransport`` (an ``asyncio.DatagramTransport`` in front of the shared
socket) under aioice's own ``StunProtocol``; STUN, checks, consent and data then run unchanged.
The internals this relies on are listed in docs/ice-mux.md and guarded by
tests/service/unit/test_icemux_contract.py.

Each datagram is delivered in the context the session's gathering ran in, so the tasks aioice
starts on arrival belong to the session (the leak detector's ownership). One socket is read in
batches from a reader callback (asyncio's datagram transport reads one datagram per wake-up).
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aiortc.rtcicetransport
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.utils import random_string

from media_common import logs

log = logs.get("media_service.icemux")

#: Addresses one session may hold: a client's host, reflexive and relayed paths, and a rebinding.
MAX_ADDRESSES = 8
#: Seconds a sent request's transaction id routes responses (aioice gives up after about 40 s).
TRANSACTION_TTL = 60.0
#: Local ufrags of joined sessions: aiortc's 4 characters collide at ~3 % among 1,000 sessions.
UFRAG_LENGTH = 16
#: Datagrams read per wake-up of the reader, before other callbacks get the loop again.
BATCH = 64
#: Linux's SO_RXQ_OVFL (socket.h): each datagram carries the socket's count of drops so far.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)

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
_BINDING_SUCCESS = 0x0101
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


class MuxTransport(asyncio.DatagramTransport):
    """One session's view of the shared socket: what aioice's StunProtocol sends and reads through."""

    def __init__(
        self,
        mux: UdpMux,
        route: Route,
        protocol: asyncio.DatagramProtocol,
        remote_password: Callable[[], str | None],
    ) -> None:
        super().__init__()
        self._mux = mux
        self.route = route
        self._protocol = protocol
        self._remote_password = remote_password
        self._closing = False
        # Deliveries run in this context: the session's, as its gathering ran (task ownership).
        self.context = contextvars.copy_context()

    def deliver(self, data: bytes, address: Address, kind: tuple[int, bytes] | None) -> None:
        if kind is not None and kind[0] == _BINDING_SUCCESS:
            password = self._remote_password()
            if password is not None and _integrity_valid(data, password):
                self._mux.table.claim(self.route, address, confirmed=True)
        self.context.run(self._protocol.datagram_received, data, address)

    # asyncio.DatagramTransport

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        data = bytes(data)
        kind = stun_kind(data)
        if kind is not None:
            klass = stun_class(kind[0])
            if klass == 0:
                self._mux.table.expect(self.route, kind[1])
            elif kind[0] == _BINDING_SUCCESS:
                # aioice answers success only to a request whose USERNAME and MESSAGE-INTEGRITY
                # it checked with this session's password: the exchange is authenticated.
                self._mux.table.claim(self.route, (addr[0], addr[1]))
        self._mux.send(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._mux.sockname
        if name == "peername":
            return None
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._mux.leave(self)
        # Directly, not in self.context: a close from inside a delivery would enter it twice.
        # StunProtocol.connection_lost starts no task.
        self._protocol.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("a mux transport keeps its protocol")

    def get_write_buffer_size(self) -> int:
        return 0


def _integrity_valid(data: bytes, password: str) -> bool:
    try:
        message = stun.parse_message(data)
    except ValueError:
        return False
    return "MESSAGE-INTEGRITY" in message.attributes and bool(message.check_message_integrity(password.encode()))


class UdpMux:
    """One bound UDP socket shared by every joined session; announced as ``announced``."""

    def __init__(
        self,
        sock: socket.socket,
        counters: MuxCounters,
        announced: Address | None = None,
        *,
        table: RoutingTable | None = None,
    ) -> None:
        self.sock = sock
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        self.sockname: Address = (host, port)
        self.announced: Address = announced or self.sockname
        self.counters = counters
        self.table = table or RoutingTable(counters)
        self._transports: dict[Route, MuxTransport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._overflows: int | None = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._ancillary = socket.CMSG_SPACE(4)
        except OSError:
            self._ancillary = 0

    @classmethod
    def bind(
        cls, host: str, port: int, counters: MuxCounters, *, receive_buffer: int, announced: Address | None = None
    ) -> UdpMux:
        """A socket on ``host:port``; no SO_REUSEPORT (a second process would take a share of the flows)."""
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:  # else v4 arrives as ::ffff:a.b.c.d and matches no candidate
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, counters, announced)

    @property
    def receive_buffer(self) -> int:
        """What the kernel granted (twice the request, capped by net.core.rmem_max)."""
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    @property
    def sessions(self) -> int:
        return self.table.sessions

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # The reader belongs to no session: its own empty context.
        contextvars.Context().run(loop.add_reader, self.sock.fileno(), self._readable)

    def close(self) -> None:
        for transport in list(self._transports.values()):
            transport.close()
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def join(
        self, ufrag: str, protocol: asyncio.DatagramProtocol, remote_password: Callable[[], str | None]
    ) -> MuxTransport:
        route = Route(ufrag)
        self.table.join(route)
        transport = MuxTransport(self, route, protocol, remote_password)
        self._transports[route] = transport
        return transport

    def leave(self, transport: MuxTransport) -> None:
        self.table.leave(transport.route)
        self._transports.pop(transport.route, None)

    def send(self, data: bytes, address: Any) -> None:
        try:
            self.sock.sendto(data, address)
        except BlockingIOError:
            self.counters.dropped("send_buffer")
        except OSError:
            self.counters.dropped("send_error")

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                if self._ancillary:
                    data, ancillary, _, source = self.sock.recvmsg(65536, self._ancillary)
                    self._count_overflows(ancillary)
                else:
                    data, source = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error queued on the socket: nothing to read for anyone
                continue
            self.route(data, (source[0], source[1]))

    def route(self, data: bytes, source: Address) -> None:
        """Hand one datagram to the session it belongs to, or drop it (counted)."""
        kind = stun_kind(data)
        route: Route | None
        if kind is None:
            route = self.table.for_address(source)
            if route is None:
                self.counters.dropped("unknown_address")
                return
        else:
            klass = stun_class(kind[0])
            if klass == 0:
                ufrag = local_ufrag(data)
                if ufrag is None:
                    self.counters.dropped("malformed")
                    return
                route = self.table.for_request(ufrag)
                if route is None:
                    self.counters.dropped("unknown_username")
                    return
            elif klass == 1:
                route = self.table.for_address(source)
                if route is None:
                    self.counters.dropped("unknown_address")
                    return
            else:
                route = self.table.for_response(kind[1])
                if route is None:
                    self.counters.dropped("unknown_transaction")
                    return
        transport = self._transports.get(route)
        if transport is None:
            return
        try:
            transport.deliver(data, source, kind)
        except Exception:  # one session's trouble must not stop the reader for all
            log.exception("ice_mux_delivery_failed", ufrag=route.ufrag)

    def _count_overflows(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                total = struct.unpack("=I", value[:4])[0]
                if self._overflows is not None and total > self._overflows:
                    self.counters.receive_buffer_errors(total - self._overflows)
                elif self._overflows is None and total:
                    self.counters.receive_buffer_errors(total)
                self._overflows = total


class IceMux:
    """The muxes of a process: one per bound address, all on one port."""

    def __init__(self, muxes: Sequence[UdpMux]) -> None:
        self.muxes = list(muxes)

    @classmethod
    def open(
        cls,
        port: int,
        host_addresses: Sequence[str],
        announced: Sequence[tuple[str, int | None]],
        counters: MuxCounters,
        *,
        receive_buffer: int,
    ) -> IceMux:
        """Bind ``port`` on each host address. An announced address of a family replaces the
        candidate address of that family, and then only the first host address of it is bound
        (one candidate per socket and session)."""
        muxes: list[UdpMux] = []
        taken_families: set[int] = set()
        try:
            for host in host_addresses:
                version = ipaddress.ip_address(host).version
                announce = next(((a, p) for a, p in announced if ipaddress.ip_address(a).version == version), None)
                if announce is not None and version in taken_families:
                    continue
                taken_families.add(version)
                mux = UdpMux.bind(host, port, counters, receive_buffer=receive_buffer)
                if announce is not None:
                    mux.announced = (announce[0], announce[1] or mux.sockname[1])
                muxes.append(mux)
        except OSError:
            for mux in muxes:
                mux.close()
            raise
        return cls(muxes)

    @property
    def sessions(self) -> int:
        return max((m.sessions for m in self.muxes), default=0)

    @property
    def addresses(self) -> int:
        return sum(m.table.addresses for m in self.muxes)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        for mux in self.muxes:
            mux.start(loop)

    def close(self) -> None:
        for mux in self.muxes:
            mux.close()


# How sessions join: a context variable read when aiortc creates a session's ICE connection.

_joining: contextvars.ContextVar[IceMux | None] = contextvars.ContextVar("media_ice_mux", default=None)


@contextmanager
def joining(mux: IceMux | None) -> Iterator[None]:
    """ICE connections created inside this block (aiortc creates them while it answers) share
    ``mux``'s ports; with None they bind their own, as stock aioice does."""
    token = _joining.set(mux)
    try:
        yield
    finally:
        _joining.reset(token)


class MuxConnection(aioice.Connection):
    """aioice's Connection, whose host candidates are the mux's ports when created inside
    ``joining(mux)``; stock otherwise. Server-reflexive candidates are asked through the mux,
    relayed ones keep their own socket to the TURN server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        mux = _joining.get()
        if mux is not None and kwargs.get("local_username") is None:
            kwargs["local_username"] = random_string(UFRAG_LENGTH)
        super().__init__(*args, **kwargs)
        self._ice_mux = mux

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        mux = self._ice_mux
        if mux is None:
            return list(await super().get_component_candidates(component, addresses, timeout))
        candidates: list[Candidate] = []
        protocols: list[aioice.ice.StunProtocol] = []
        try:
            for udp in mux.muxes:
                protocol = aioice.ice.StunProtocol(self)
                transport = udp.join(self.local_username, protocol, lambda: self.remote_password)
                protocol.connection_made(transport)
                host, port = udp.announced
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=host,
                    port=port,
                    type="host",
                )
                protocols.append(protocol)
                candidates.append(protocol.local_candidate)
        except MuxError:
            for protocol in protocols:
                protocol.transport.close()
            raise
        self._protocols += protocols
        reflexive = [
            asyncio.create_task(aioice.ice.server_reflexive_candidate(p, self.stun_server))
            for p in protocols
            if self.stun_server and ipaddress.ip_address(p.transport.get_extra_info("sockname")[0]).version == 4
        ]
        # No host addresses: aioice then only connects to the TURN server, if one is configured.
        candidates += await super().get_component_candidates(component, [], timeout)
        if reflexive:
            done, pending = await asyncio.wait(reflexive, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is None:
                    candidates.append(task.result()[0])
        return candidates


def install() -> None:
    """aiortc creates its ICE connections through ``aiortc.rtcicetransport.Connection``: the one
    place to put MuxConnection, process-wide (stock behaviour outside ``joining``)."""
    setattr(aiortc.rtcicetransport, "Connection", MuxConnection)  # noqa: B010 (not exported)


def is_installed() -> bool:
    return getattr(aiortc.rtcicetransport, "Connection", None) is MuxConnection


__all__ = [
    "CLAIM_REFUSAL_REASONS",
    "DROP_REASONS",
    "IceMux",
    "MuxConnection",
    "MuxCounters",
    "MuxError",
    "RoutingTable",
    "UdpMux",
    "install",
    "joining",
]
