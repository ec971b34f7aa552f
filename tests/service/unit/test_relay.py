"""Forwarding's aiortc glue (relay.py) without a network: real aiortc receivers and senders, a real
aioice connection and protocol, real SRTP sessions; only the DTLS transport is stood in for, with
the keys a handshake would have given it, and the socket under the nominated pair.

The first tests pin the aiortc and aioice internals forwarding relies on (the ``*_INTERNALS``
tuples): an upgrade that renames or reshapes one fails here, naming it, before any echo test
fails with packets that never arrive.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aioice
import pytest
from aioice.ice import StunProtocol
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import (
    RTCRtcpParameters,
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)
from pylibsrtp import Policy, Session

from media_service.relay import (
    CONNECTION_INTERNALS,
    RECEIVER_INTERNALS,
    SENDER_INTERNALS,
    TRANSPORT_INTERNALS,
    Counters,
    Forwarder,
    KeyframeRelay,
    PacketHistory,
    forward,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
RTX = RTCRtpCodecParameters(mimeType="video/rtx", clockRate=90000, payloadType=98, parameters={"apt": 97})
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
EXTENSIONS = [
    RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
]
EXTENSIONS_MAP = HeaderExtensionsMap()
EXTENSIONS_MAP.configure(RTCRtpSendParameters(headerExtensions=EXTENSIONS))
MEDIA_SSRC, RTX_SSRC, RTCP_SSRC = 0x1234, 0x5678, 0x9999
PEER = ("127.0.0.1", 50000)


def srtp_pair() -> tuple[Session, Session]:
    """An outbound and an inbound SRTP session on one key, as DTLS-SRTP gives each direction."""
    key = os.urandom(30)
    return (
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
        Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)),
    )


class Socket:
    """Stands in for the socket under the nominated pair: what is sent, decrypted as the viewer would."""

    def __init__(self, viewer: Session) -> None:
        self.viewer = viewer
        self.sent: list[RtpPacket] = []

    def sendto(self, data: bytes, address: Any) -> None:
        assert address == PEER
        self.sent.append(RtpPacket.parse(self.viewer.unprotect(data), EXTENSIONS_MAP))


@dataclass
class Pair:
    protocol: Any
    remote_addr: tuple[str, int] = PEER


class Dtls:
    """Stands in for a connected RTCDtlsTransport over a real aioice connection and protocol."""

    _stats_id = "transport"
    state = "connected"

    def __init__(self) -> None:
        self._state = State.CONNECTED
        self.peer, self._rx_srtp = srtp_pair()  # peer -> service
        self._tx_srtp, viewer = srtp_pair()  # service -> viewer
        self.socket = Socket(viewer)
        connection = aioice.Connection(ice_controlling=False)
        self.protocol = StunProtocol(connection)
        self.protocol.connection_made(self.socket)  # type: ignore[arg-type]
        self.protocol.local_candidate = aioice.Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
        connection._protocols.append(self.protocol)
        connection._nominated[1] = Pair(self.protocol)
        self.transport = type("IceTransport", (), {"_connection": connection})()
        self.rtcp: list[bytes] = []  # what aiortc sends through _send_rtp: RTCP, retransmissions
        for name in ("rx_bytes", "rx_packets", "tx_bytes", "tx_packets"):
            setattr(self, f"_RTCDtlsTransport__{name}", 0)

    def _register_rtp_receiver(self, receiver: Any, parameters: Any) -> None:
        return None

    def _unregister_rtp_receiver(self, receiver: Any) -> None:
        return None

    def _register_rtp_sender(self, sender: Any, parameters: Any) -> None:
        return None

    def _unregister_rtp_sender(self, sender: Any) -> None:
        return None

    async def _send_rtp(self, data: bytes) -> None:
        self.rtcp.append(data)

    def _get_stats(self) -> dict[str, Any]:
        return {}

    def queued(self) -> int:
        """Datagrams left to aiortc's own way (the connection's queue, read by the DTLS task)."""
        return int(self.transport._connection._queue.qsize())

    def datagram(self, packet: RtpPacket) -> None:
        """``packet`` arriving from the peer, encrypted, on the connection's socket."""
        self.protocol.datagram_received(self.peer.protect(bytes(packet.serialize())), PEER)

    def feedback(self, kind: type, fmt: int) -> list[Any]:
        return [
            packet
            for data in self.rtcp
            if 191 < data[1] < 209
            for packet in RtcpPacket.parse(data)
            if isinstance(packet, kind) and packet.fmt == fmt
        ]


@dataclass
class Recorder:
    keyframes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def counters(self) -> Counters:
        return Counters(keyframe_requests=self.keyframes.append, packets_dropped=self.dropped.append)


def media_packet(
    sequence: int, *, ssrc: int = MEDIA_SSRC, payload_type: int = 97, payload: bytes = b"\x10frame"
) -> RtpPacket:
    packet = RtpPacket(payload_type=payload_type, sequence_number=sequence, timestamp=3000 * sequence, ssrc=ssrc)
    packet.payload = payload
    return packet


async def sent_soon(done: Callable[[], object]) -> None:
    """Let the tasks that send (NACKs, PLIs) run until ``done()``; a test that waits longer fails."""
    async with asyncio.timeout(5):
        while not done():
            await asyncio.sleep(0)


def decoder_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.endswith("-decoder"))


@dataclass
class Echo:
    dtls: Dtls
    receiver: RTCRtpReceiver
    sender: RTCRtpSender
    forwarder: Forwarder

    async def stop(self) -> None:
        await self.receiver.stop()
        await self.sender.stop()


async def echo(
    *, codecs: tuple[RTCRtpCodecParameters, ...] = (VP8, RTX), send: bool = True, recorder: Recorder | None = None
) -> Echo:
    """A forwarding receiver and its sender, started as RTCPeerConnection starts them."""
    dtls = Dtls()
    kind = "audio" if codecs[0].mimeType.startswith("audio") else "video"
    receiver = RTCRtpReceiver(kind, dtls)  # type: ignore[arg-type]
    receiver._track = RemoteStreamTrack(kind=kind)  # as RTCPeerConnection does before the track event
    receiver._set_rtcp_ssrc(RTCP_SSRC)
    threads = decoder_threads()
    forwarder = forward(receiver, (recorder or Recorder()).counters)
    sender = RTCRtpSender(forwarder.track, dtls)  # type: ignore[arg-type]
    forwarder.attach(sender)
    if send:
        await sender.send(
            RTCRtpSendParameters(
                codecs=[VP8, RTX] if kind == "video" else [OPUS],
                headerExtensions=EXTENSIONS,
                muxId="0",
                rtcp=RTCRtcpParameters(cname="service", ssrc=sender._ssrc),
            )
        )
    rtx = RTCRtpRtxParameters(ssrc=RTX_SSRC) if RTX in codecs else None
    await receiver.receive(
        RTCRtpReceiveParameters(
            codecs=list(codecs),
            headerExtensions=EXTENSIONS,
            encodings=[RTCRtpDecodingParameters(ssrc=MEDIA_SSRC, payloadType=codecs[0].payloadType, rtx=rtx)],
        )
    )
    assert decoder_threads() == threads, "forwarding started a decoder thread"
    return Echo(dtls, receiver, sender, forwarder)


# ----------------------------------------------------------------------------- aiortc's and aioice's internals


async def test_the_receiver_internals_forwarding_relies_on_exist() -> None:
    receiver = RTCRtpReceiver("video", Dtls())  # type: ignore[arg-type]
    attributes = set(vars(receiver)) | set(dir(receiver))
    missing = [name for name in RECEIVER_INTERNALS if name not in attributes]
    assert not missing, f"aiortc's RTCRtpReceiver no longer has {missing}: update media_service/relay.py"
    assert vars(receiver)["_RTCRtpReceiver__started"] is False


async def test_the_sender_internals_forwarding_relies_on_exist() -> None:
    sender = RTCRtpSender("video", Dtls())  # type: ignore[arg-type]
    attributes = set(vars(sender)) | set(dir(sender))
    missing = [name for name in SENDER_INTERNALS if name not in attributes]
    assert not missing, f"aiortc's RTCRtpSender no longer has {missing}: update media_service/relay.py"


async def test_the_transport_and_connection_internals_forwarding_relies_on_exist() -> None:
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()])
    missing = [name for name in TRANSPORT_INTERNALS if name not in set(vars(dtls)) | set(dir(dtls))]
    assert not missing, f"aiortc's RTCDtlsTransport no longer has {missing}: update media_service/relay.py"
    connection = dtls.transport._connection
    missing = [name for name in CONNECTION_INTERNALS if name not in set(vars(connection)) | set(dir(connection))]
    assert not missing, f"aioice's Connection no longer has {missing}: update media_service/relay.py"


async def test_the_sender_asks_for_a_keyframe_through_send_keyframe_on_pli_and_fir() -> None:
    sender = RTCRtpSender("video", Dtls())  # type: ignore[arg-type]
    asked: list[str] = []
    vars(sender)["_send_keyframe"] = lambda: asked.append("keyframe")
    for fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=sender._ssrc))
    assert asked == ["keyframe", "keyframe"], "aiortc's sender no longer calls _send_keyframe on PLI and FIR"


async def test_the_sender_answers_a_nack_from_the_packet_history() -> None:
    dtls = Dtls()
    sender = RTCRtpSender("video", dtls)  # type: ignore[arg-type]
    history = PacketHistory(vars(sender)["_RTCRtpSender__rtp_header_extensions_map"])
    vars(sender)["_RTCRtpSender__rtp_history"] = history
    history.put(70000 % 65536, media_packet(70000 % 65536, ssrc=sender._ssrc).serialize())
    await sender._retransmit(70000 % 65536 + 128)  # the same slot, another packet: nothing
    assert dtls.rtcp == []
    await sender._retransmit(70000 % 65536)
    assert [RtpPacket.parse(d).sequence_number for d in dtls.rtcp] == [70000 % 65536]


async def test_a_started_receiver_cannot_be_forwarded(no_leaks: None) -> None:
    receiver = RTCRtpReceiver("video", Dtls())  # type: ignore[arg-type]
    receiver._track = RemoteStreamTrack(kind="video")
    await receiver.receive(RTCRtpReceiveParameters(codecs=[VP8]))  # aiortc's own: starts a decoder thread
    with pytest.raises(RuntimeError, match="started"):
        forward(receiver)
    await receiver.stop()


# ----------------------------------------------------------------------------- the media path


async def test_packets_are_forwarded_as_the_senders_and_then_take_the_fast_path(no_leaks: None) -> None:
    e = await echo()
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)  # aiortc's way, the first time
    e.dtls.datagram(media_packet(11))  # from now on, straight from the socket
    e.dtls.datagram(media_packet(12, ssrc=0x4444))  # an SSRC not routed: left to aiortc
    assert e.dtls.queued() == 1
    sent = e.dtls.socket.sent
    assert [p.ssrc for p in sent] == [e.sender._ssrc] * 2
    assert [p.payload_type for p in sent] == [97, 97]
    assert [p.payload for p in sent] == [b"\x10frame"] * 2
    assert sent[1].sequence_number == (sent[0].sequence_number + 1) & 0xFFFF
    assert sent[1].timestamp == (sent[0].timestamp + 3000) & 0xFFFFFFFF
    assert [p.extensions.mid for p in sent] == ["0", "0"]
    # What the RTCP reports say on both sides counts the forwarded packets.
    sender_stats = next(s for s in (await e.sender.getStats()).values() if s.type == "outbound-rtp")
    assert (sender_stats.packetsSent, sender_stats.bytesSent) == (2, 2 * len(b"\x10frame"))
    receiver_stats = vars(e.receiver)["_RTCRtpReceiver__remote_streams"][MEDIA_SSRC]
    assert receiver_stats.packets_received == 2
    assert vars(e.dtls)["_RTCDtlsTransport__rx_packets"] == 1  # the fast path's one
    await e.stop()
    e.dtls.datagram(media_packet(13))  # a stopped receiver's SSRC is no longer routed
    assert len(sent) == 2 and e.dtls.queued() == 2


async def test_a_forged_packet_is_counted_and_goes_nowhere(no_leaks: None) -> None:
    recorder = Recorder()
    e = await echo(recorder=recorder)
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)
    forged = bytearray(e.dtls.peer.protect(bytes(media_packet(11).serialize())))
    forged[-1] ^= 1  # the authentication tag no longer matches
    e.dtls.protocol.datagram_received(bytes(forged), PEER)
    assert len(e.dtls.socket.sent) == 1 and e.dtls.queued() == 0
    assert recorder.dropped == ["srtp"]
    await e.stop()


async def test_a_codec_the_sender_did_not_negotiate_is_dropped_and_counted(no_leaks: None) -> None:
    recorder = Recorder()
    h264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
    e = await echo(codecs=(VP8, h264), recorder=recorder)
    await e.receiver._handle_rtp_packet(media_packet(10, payload_type=102), arrival_time_ms=0)
    assert e.dtls.socket.sent == [] and recorder.dropped == ["codec"]
    await e.stop()


async def test_a_retransmission_is_forwarded_as_the_packet_it_repairs_and_losses_are_nacked(no_leaks: None) -> None:
    e = await echo()
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)
    e.dtls.datagram(media_packet(13))  # 11 and 12 lost on the way in
    await sent_soon(lambda: e.dtls.feedback(RtcpRtpfbPacket, RTCP_RTPFB_NACK))  # from a task of its own
    nacks = e.dtls.feedback(RtcpRtpfbPacket, RTCP_RTPFB_NACK)
    assert [(n.media_ssrc, n.lost) for n in nacks] == [(MEDIA_SSRC, [11, 12])]
    rtx = media_packet(0, ssrc=RTX_SSRC, payload_type=98, payload=(11).to_bytes(2, "big") + b"\x10again")
    await e.receiver._handle_rtp_packet(rtx, arrival_time_ms=0)  # RTX comes aiortc's way first too
    sent = e.dtls.socket.sent
    assert [p.sequence_number - sent[0].sequence_number for p in sent] == [0, 3, 1]  # in the gap
    assert (sent[2].ssrc, sent[2].payload_type, sent[2].payload) == (e.sender._ssrc, 97, b"\x10again")
    await e.stop()


async def test_a_peer_that_only_sends_gets_nothing_sent_and_no_keyframe_request(no_leaks: None) -> None:
    recorder = Recorder()
    e = await echo(send=False, recorder=recorder)
    for sequence in range(10, 20):
        await e.receiver._handle_rtp_packet(media_packet(sequence), arrival_time_ms=0)
    assert e.dtls.socket.sent == [] and recorder == Recorder()
    assert vars(e.receiver)["_RTCRtpReceiver__remote_streams"][MEDIA_SSRC].packets_received == 10  # still reported
    await e.receiver.stop()


async def test_stopping_the_receiver_ends_the_senders_track(no_leaks: None) -> None:
    e = await echo()
    await e.receiver.stop()
    assert e.forwarder.track.readyState == "ended"
    await e.sender.stop()


# ----------------------------------------------------------------------------- what the viewer asks for


async def test_a_viewers_keyframe_request_becomes_a_pli_to_the_sending_peer(no_leaks: None) -> None:
    recorder = Recorder()
    e = await echo(recorder=recorder)
    await e.sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=e.sender._ssrc))
    assert recorder.keyframes == ["coalesced"]  # nothing received yet: the first frame is a keyframe anyway
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)
    await e.sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=e.sender._ssrc))
    await sent_soon(lambda: e.dtls.feedback(RtcpPsfbPacket, RTCP_PSFB_PLI))
    assert [p.media_ssrc for p in e.dtls.feedback(RtcpPsfbPacket, RTCP_PSFB_PLI)] == [MEDIA_SSRC]
    assert recorder.keyframes == ["coalesced", "relayed"]
    await e.stop()


async def test_keyframe_requests_within_the_holdoff_are_coalesced(no_leaks: None) -> None:
    recorder, now, sent = Recorder(), [100.0], []

    class Receiver:
        async def _send_rtcp_pli(self, ssrc: int) -> None:
            sent.append(ssrc)

    keyframes = KeyframeRelay(Receiver(), lambda: MEDIA_SSRC, recorder.counters, holdoff=0.25, clock=lambda: now[0])  # type: ignore[arg-type]
    keyframes.request()
    keyframes.request()
    now[0] = 100.3
    keyframes.request()
    await sent_soon(lambda: len(sent) >= 2)
    assert sent == [MEDIA_SSRC, MEDIA_SSRC] and recorder.keyframes == ["relayed", "coalesced", "relayed"]


async def test_the_viewers_bandwidth_estimate_goes_to_the_sending_peer(no_leaks: None) -> None:
    e = await echo()
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)
    remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(350_000, [e.sender._ssrc]))
    await e.sender._handle_rtcp_packet(remb)
    other = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(10_000, [0x7777]))
    await e.sender._handle_rtcp_packet(other)  # about another stream: not ours to pass on
    relayed = e.dtls.feedback(RtcpPsfbPacket, RTCP_PSFB_APP)
    assert [(p.ssrc, unpack_remb_fci(p.fci)) for p in relayed] == [(RTCP_SSRC, (350_000, [MEDIA_SSRC]))]
    await e.stop()


async def test_nothing_process_wide_keeps_a_finished_sessions_transport(no_leaks: None) -> None:
    e = await echo()
    await e.receiver._handle_rtp_packet(media_packet(10), arrival_time_ms=0)
    e.dtls.datagram(media_packet(11))
    await e.stop()
    transport = weakref.ref(e.dtls)
    del e
    gc.collect()
    assert transport() is None, "a stopped echo's DTLS transport is still referenced"
