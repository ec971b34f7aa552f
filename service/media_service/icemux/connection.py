"""How a session joins the shared port: aiortc creates its ICE connection as a ``MuxConnection``,
which, while ``joining`` names a mux, gathers its host candidates on the shared socket."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import aioice.ice
import aiortc.rtcicetransport
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.utils import random_string

from media_common import logs
from media_service.icemux.routing import MuxCounters, MuxError
from media_service.icemux.udp import UdpMux

log = logs.get("media_service.icemux")


#: Local ufrags of joined sessions: aiortc's 4 characters collide at ~3 % among 1,000 sessions.
UFRAG_LENGTH = 16


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
