"""The shared socket: one non-blocking UDP socket per bound address, read in batches, and each
session's view of it, the transport aioice's own StunProtocol sends and reads through."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from aioice import stun

from media_common import logs
from media_service.icemux.routing import (
    BINDING_SUCCESS,
    Address,
    MuxCounters,
    Route,
    RoutingTable,
    local_ufrag,
    stun_class,
    stun_kind,
)

log = logs.get("media_service.icemux")


#: Datagrams read per wake-up of the reader, before other callbacks get the loop again.
BATCH = 64
#: Linux's SO_RXQ_OVFL (socket.h): each datagram carries the socket's count of drops so far.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)


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
        if kind is not None and kind[0] == BINDING_SUCCESS:
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
            elif kind[0] == BINDING_SUCCESS:
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
