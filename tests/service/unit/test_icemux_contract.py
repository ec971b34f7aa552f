"""The aioice and aiortc internals the shared ICE port rests on, and real aioice sessions through it.

The mux does not fork aioice: it replaces aiortc's ``Connection`` and puts its own datagram
transport under aioice's ``StunProtocol``. The first test names every internal that takes, so an
upgrade that moves one fails here, loudly, rather than in a cluster. The others run stock aioice
connections (the client side) against muxed ones on one loopback port, and attack the port with
raw datagrams: unknown usernames, bad integrity, an address another session holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aioice
import aioice.ice
import aiortc.rtcicetransport
import pytest
from aioice import stun

from media_service.icemux import IceMux, MuxConnection, MuxCounters, UdpMux, install, is_installed, joining

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("test_icemux_mark", default="")


def test_the_aioice_and_aiortc_internals_the_mux_relies_on() -> None:
    # aiortc creates its ICE connections by this module-level name, with keyword arguments.
    assert aiortc.rtcicetransport.Connection in (aioice.Connection, MuxConnection)
    gatherer = inspect.getsource(aiortc.rtcicetransport.RTCIceGatherer.__init__)
    assert "Connection(" in gatherer and "local_username=local_username" in gatherer
    # Host candidates come from one overridable method, and land in Connection._protocols.
    parameters = list(inspect.signature(aioice.Connection.get_component_candidates).parameters)
    assert parameters == ["self", "component", "addresses", "timeout"]
    source = inspect.getsource(aioice.Connection.get_component_candidates)
    assert "self._protocols += host_protocols" in source and "StunProtocol(self)" in source
    assert "for protocol in self._protocols" in inspect.getsource(aioice.Connection.close)
    # The stock protocol talks to its transport only through these.
    protocol = inspect.getsource(aioice.ice.StunProtocol)
    for use in ("self.transport.sendto(", "self.transport.close()", "def connection_made", "def datagram_received"):
        assert use in protocol, use
    assert list(inspect.signature(aioice.ice.StunProtocol.__init__).parameters) == ["self", "receiver"]
    assert list(inspect.signature(aioice.ice.server_reflexive_candidate).parameters) == ["protocol", "stun_server"]
    # A Binding success is sent only after USERNAME and MESSAGE-INTEGRITY were checked: the mux
    # claims an address when it sees one go out.
    received = inspect.getsource(aioice.Connection.request_received)
    assert received.index("check_message_integrity") < received.index("message_class=stun.Class.RESPONSE")
    connection = aioice.Connection(ice_controlling=False)
    for attribute in ("_protocols", "local_username", "local_password", "remote_password", "stun_server"):
        assert hasattr(connection, attribute), attribute


def test_install_replaces_the_connection_aiortc_creates() -> None:
    original = aiortc.rtcicetransport.Connection
    try:
        install()
        assert is_installed()
        # Outside joining(), a MuxConnection is a stock one: its own port, aiortc's 4-character ufrag.
        assert MuxConnection(ice_controlling=False)._ice_mux is None
    finally:
        aiortc.rtcicetransport.Connection = original  # type: ignore[attr-defined]


@dataclass
class Counts:
    drops: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def counters(self) -> MuxCounters:
        return MuxCounters(dropped=self.drops.append, refused=self.refusals.append)


@pytest.fixture
async def mux() -> AsyncIterator[tuple[IceMux, Counts]]:
    counts = Counts()
    udp = UdpMux.bind("127.0.0.1", 0, counts.counters(), receive_buffer=1 << 20)
    mux = IceMux([udp])
    mux.start(asyncio.get_running_loop())
    try:
        yield mux, counts
    finally:
        mux.close()


async def session(mux: IceMux, mark: str) -> tuple[aioice.Connection, aioice.Connection]:
    """A muxed (server) connection and a stock (client) one, connected."""
    token = MARK.set(mark)
    try:
        with joining(mux):
            server = MuxConnection(ice_controlling=False)
        await server.gather_candidates()
    finally:
        MARK.reset(token)
    client = aioice.Connection(ice_controlling=True)
    await client.gather_candidates()
    for a, b in ((client, server), (server, client)):
        a.remote_username, a.remote_password = b.local_username, b.local_password
        for candidate in b.local_candidates:
            await a.add_remote_candidate(candidate)
        await a.add_remote_candidate(None)
    await asyncio.wait_for(asyncio.gather(server.connect(), client.connect()), 10)
    return server, client


def binding(username: str, key: bytes | None) -> stun.Message:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1
    message.attributes["ICE-CONTROLLING"] = 1
    message.add_message_integrity(key or os.urandom(22))
    message.add_fingerprint()
    return message


async def replies(sock: socket.socket, until: bytes, timeout: float = 5.0) -> list[stun.Message]:
    """Every datagram the socket gets until the response to transaction ``until`` arrives: the port
    handles datagrams in order, so whatever answers earlier requests would have come before it."""
    loop = asyncio.get_running_loop()
    got: list[stun.Message] = []
    deadline = time.monotonic() + timeout
    while not got or got[-1].transaction_id != until:
        data = await asyncio.wait_for(loop.sock_recv(sock, 2048), max(0.01, deadline - time.monotonic()))
        got.append(stun.parse_message(data))
    return got


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def test_sessions_share_one_port_and_deliver_in_their_own_context(
    mux: tuple[IceMux, Counts], no_leaks: None
) -> None:
    ice_mux, counts = mux
    port = ice_mux.muxes[0].sockname[1]
    pairs = [await session(ice_mux, f"session-{i}") for i in range(3)]
    try:
        for i, (server, client) in enumerate(pairs):
            assert [(c.type, c.port) for c in server.local_candidates] == [("host", port)]
            assert len(server.local_username) == 16
            await client.send(f"ping {i}".encode())
            assert await asyncio.wait_for(server.recv(), 5) == f"ping {i}".encode()
            await server.send(f"pong {i}".encode())
            assert await asyncio.wait_for(client.recv(), 5) == f"pong {i}".encode()
        assert ice_mux.sessions == 3 and ice_mux.addresses == 3
        transports = [t for t in ice_mux.muxes[0]._transports.values()]
        assert sorted(t.context.get(MARK) for t in transports) == ["session-0", "session-1", "session-2"]
        assert counts.drops == [] and counts.refusals == []
    finally:
        for server, client in pairs:
            await server.close()
            await client.close()
    assert ice_mux.muxes[0].table.is_empty() and ice_mux.sessions == 0


async def test_unknown_usernames_get_no_answer_and_bad_integrity_only_a_401(
    mux: tuple[IceMux, Counts], no_leaks: None
) -> None:
    ice_mux, counts = mux
    server, client = await session(ice_mux, "live")
    target = ice_mux.muxes[0].sockname
    attacker = raw_socket()
    try:
        for i in range(300):  # a bounded flood of unknown ufrags
            attacker.sendto(bytes(binding(f"unknown{i:09d}:x", None)), target)
        for _ in range(100):  # the live session's ufrag with a wrong password
            attacker.sendto(bytes(binding(f"{server.local_username}:x", None)), target)
        marker = binding("alsounknown0000:x", None)
        last = binding(f"{server.local_username}:x", None)
        attacker.sendto(bytes(marker), target)
        attacker.sendto(bytes(last), target)
        got = await replies(attacker, last.transaction_id)
        # Nothing reflected for unknown ufrags; every wrong-password request got an unsigned 401.
        assert {m.message_class for m in got} == {stun.Class.ERROR}
        assert {m.attributes["ERROR-CODE"][0] for m in got} == {401}
        assert len(got) == 101 and marker.transaction_id not in {m.transaction_id for m in got}
        assert counts.drops.count("unknown_username") == 301
        assert ice_mux.addresses == 1 and counts.refusals == []  # the attacker claimed nothing
        # The live session goes on.
        await client.send(b"still here")
        assert await asyncio.wait_for(server.recv(), 5) == b"still here"
        # DTLS-looking bytes from an address nobody claimed go nowhere.
        attacker.sendto(b"\x16\xfe\xfd" + os.urandom(60), target)
        probe = binding("yetanotherunknown:x", None)
        attacker.sendto(bytes(probe), target)
        last = binding(f"{server.local_username}:x", None)
        attacker.sendto(bytes(last), target)
        assert [m.transaction_id for m in await replies(attacker, last.transaction_id)] == [last.transaction_id]
        assert "unknown_address" in counts.drops
    finally:
        attacker.close()
        await server.close()
        await client.close()


async def test_an_authenticated_session_cannot_take_another_sessions_address(
    mux: tuple[IceMux, Counts], no_leaks: None
) -> None:
    ice_mux, counts = mux
    with joining(ice_mux):
        first, second = MuxConnection(ice_controlling=False), MuxConnection(ice_controlling=False)
    await first.gather_candidates()
    await second.gather_candidates()
    shared = raw_socket()
    target = ice_mux.muxes[0].sockname
    table = ice_mux.muxes[0].table
    try:
        # An authenticated exchange with the first session from this socket: it claims the address.
        request = binding(f"{first.local_username}:x", first.local_password.encode())
        shared.sendto(bytes(request), target)
        (answer,) = await replies(shared, request.transaction_id)
        assert answer.message_class == stun.Class.RESPONSE
        address = shared.getsockname()
        assert table.for_address(address) is not None
        holder = table.for_address(address)
        # The second session's own credentials, from the same address: answered, but not claimed.
        request = binding(f"{second.local_username}:x", second.local_password.encode())
        shared.sendto(bytes(request), target)
        (answer,) = await replies(shared, request.transaction_id)
        assert answer.message_class == stun.Class.RESPONSE
        assert table.for_address(address) is holder and counts.refusals == ["taken"]
        # Once the first has gone, the address is free: a client may reconnect from its port.
        await first.close()
        assert table.for_address(address) is None
        request = binding(f"{second.local_username}:x", second.local_password.encode())
        shared.sendto(bytes(request), target)
        await replies(shared, request.transaction_id)
        assert table.for_address(address) is not None and counts.refusals == ["taken"]
    finally:
        shared.close()
        await first.close()
        await second.close()
    assert table.is_empty()


def test_receive_buffer_overflows_are_counted_from_the_socket() -> None:
    """SO_RXQ_OVFL: the kernel's count of datagrams dropped on the socket rides on the next one read."""
    overflows: list[int] = []
    drops: list[str] = []
    udp = UdpMux.bind(
        "127.0.0.1",
        0,
        MuxCounters(dropped=drops.append, receive_buffer_errors=overflows.append),
        receive_buffer=4096,  # the kernel's minimum or so: a few datagrams fit
    )
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(200):  # nothing reads meanwhile
            sender.sendto(b"\x80" + bytes(999), udp.sockname)
        udp._readable()  # what the reader does when the socket is readable (a batch: more than fit)
        received = len(drops)
        assert 0 < received < 200 and set(drops) == {"unknown_address"}
        # The count is stamped on each datagram as it is queued: the next one carries the drops.
        sender.sendto(b"\x80" + bytes(999), udp.sockname)
        udp._readable()
        assert sum(overflows) == 200 - received
    finally:
        sender.close()
        udp.close()


async def test_an_ipv6_port_takes_ipv6_only() -> None:
    try:
        udp = UdpMux.bind("::1", 0, MuxCounters(), receive_buffer=1 << 20)
    except OSError as exc:  # no IPv6 on this host
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert udp.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert udp.sockname[0] == "::1"
    finally:
        udp.close()
