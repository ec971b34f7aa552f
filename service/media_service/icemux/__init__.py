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

from media_service.icemux.connection import IceMux, MuxConnection, install, is_installed, joining
from media_service.icemux.routing import (
    CLAIM_REFUSAL_REASONS,
    DROP_REASONS,
    MuxCounters,
    MuxError,
    Route,
    RoutingTable,
    local_ufrag,
    stun_class,
    stun_kind,
)
from media_service.icemux.udp import MuxTransport, UdpMux

__all__ = [
    "CLAIM_REFUSAL_REASONS",
    "DROP_REASONS",
    "IceMux",
    "MuxConnection",
    "MuxCounters",
    "MuxError",
    "MuxTransport",
    "Route",
    "RoutingTable",
    "UdpMux",
    "install",
    "is_installed",
    "joining",
    "local_ufrag",
    "stun_class",
    "stun_kind",
]
