"""Echo media as the RTP packets the peer sent: no decode, no encode, not even reassembly.

aiortc's ``RTCRtpReceiver`` puts every received packet through a bandwidth estimator and a jitter
buffer, and hands each completed frame to a decoder thread of its own (one OS thread per received
track); its ``RTCRtpSender`` then encodes the decoded picture again and packetizes it. A forwarding
server needs none of that: ``forward(receiver)`` and ``Forwarder.attach(sender)`` join the two
ends packet by packet, as an SFU does.

- **Receiving.** The receiver keeps aiortc's receive statistics (its RTCP receiver reports) and its
  NACK generator (lost packets are asked for again); it starts no decoder thread, runs no jitter
  buffer and no bandwidth estimator. Each packet goes on as it arrives (``rtp_forwarding``: the
  sender's SSRC, payload type, sequence numbers, timestamps and header extensions; the payload as
  it came).
- **The fast path.** aiortc reads every datagram through a queue and a task of the DTLS transport.
  Once a media SSRC has come that way once, the ``FastPath`` of its transport takes that SSRC's
  datagrams straight from the ICE connection as they arrive: decrypted, rewritten, encrypted and
  sent in one call, with no queue and no task between. Everything else (RTCP, DTLS, the data
  channel, unknown SSRCs) takes aiortc's own way.
- **Sending.** The sender's own loop idles on a track that yields nothing (``ForwardedTrack``); its
  RTCP sender reports count the forwarded packets; the viewer's NACKs are answered from a history
  of the packets sent (``PacketHistory``), in RTX as before.
- **Keyframes.** A keyframe request (PLI or FIR) from the viewer becomes a PLI to the peer that sends
  the media (``KeyframeRelay``), at most one every ``KEYFRAME_HOLDOFF`` seconds: the one encoder
  that can make a keyframe is the sending peer's.
- **Bandwidth.** The viewer's REMB (its estimate of what reaches it) goes to the sending peer, whose
  encoder is the one that can act on it; the service's receiver reports still carry the loss on the
  way in. The service estimates nothing itself.

This relies on aiortc and aioice internals, named in the ``*_INTERNALS`` tuples;
``tests/service/unit/test_relay.py`` checks each of them against the installed versions and fails
loudly, naming the one that changed, on an upgrade that moves them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc import clock as aiortc_clock
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters, RTCRtpSendParameters
from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTP_HISTORY_SIZE,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from media_common import logs
from media_service import rtp_forwarding
from media_service.rtp_forwarding import Outgoing, Packet, Rewriter

log = logs.get("media_service.relay")

#: Seconds between two keyframe requests relayed to the sending peer; requests in between are coalesced.
KEYFRAME_HOLDOFF = 0.25
#: Why a received packet was not forwarded (``media_forwarded_packets_dropped_total{reason}``):
#: its codec is not one the sender negotiated, or it failed SRTP authentication.
DROP_REASONS = ("codec", "srtp")
#: Where a DTLS transport keeps its fast path.
FAST_PATH_ATTRIBUTE = "_media_service_fast_path"
#: How often the receiver's list of active sources (``getSynchronizationSources``) is refreshed.
SOURCE_REFRESH_S = 1.0

#: What forwarding reads or replaces in an ``RTCRtpReceiver`` (name-mangled private attributes and
#: methods of aiortc 1.16), checked by the contract test.
RECEIVER_INTERNALS = (
    "_RTCRtpReceiver__codecs",  # payload type -> codec, filled by receive()
    "_RTCRtpReceiver__rtx_ssrc",  # RTX SSRC -> media SSRC, filled by receive()
    "_RTCRtpReceiver__remote_streams",  # SSRC -> StreamStatistics, what receiver reports tell
    "_RTCRtpReceiver__nack_generator",  # None for audio
    "_RTCRtpReceiver__active_ssrc",  # SSRC -> when last seen, for getSynchronizationSources()
    "_RTCRtpReceiver__rtcp_ssrc",  # the SSRC its RTCP feedback is sent from
    "_RTCRtpReceiver__rtcp_task",  # the receiver reports task receive() starts and stop() awaits
    "_RTCRtpReceiver__started",
    "_handle_rtp_packet",  # what the DTLS transport calls with each packet routed to the receiver
    "_run_rtcp",
    "_send_rtcp",
    "_send_rtcp_nack",
    "_send_rtcp_pli",
)
#: What forwarding reads or replaces in an ``RTCRtpSender``.
SENDER_INTERNALS = (
    "_send_keyframe",  # _handle_rtcp_packet calls it on PLI and FIR
    "_handle_rtcp_packet",  # what the DTLS transport calls with the viewer's RTCP
    "_retransmit",  # answers a NACK from __rtp_history: .get(sequence % RTP_HISTORY_SIZE)
    "_RTCRtpSender__rtp_history",
    "_RTCRtpSender__ntp_timestamp",  # these four are what its RTCP sender reports say
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__rtp_header_extensions_map",
)
#: What forwarding uses of an ``RTCDtlsTransport`` (and of the ICE transport under it).
TRANSPORT_INTERNALS = (
    "_register_rtp_receiver",  # the replaced receive() calls it, as aiortc's does
    "_rx_srtp",
    "_tx_srtp",
    "_state",
    "_RTCDtlsTransport__rx_bytes",  # transport statistics the fast path keeps counting
    "_RTCDtlsTransport__rx_packets",
    "_RTCDtlsTransport__tx_bytes",
    "_RTCDtlsTransport__tx_packets",
)
#: What the fast path uses of aioice's ``Connection`` (``RTCIceTransport._connection``).
CONNECTION_INTERNALS = (
    "data_received",  # each datagram that is not STUN, from the connection's protocols
    "_nominated",  # component -> the nominated pair, whose protocol's transport sends
    "_protocols",  # the StunProtocols whose datagram_received the socket (or the ICE port) calls
)


def _ignore(_: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Counters:
    """Where forwarding reports (the service's metrics): keyframe requests by result (``relayed``,
    ``coalesced``), and received packets not forwarded, by reason (``DROP_REASONS``)."""

    keyframe_requests: Callable[[str], None] = _ignore
    packets_dropped: Callable[[str], None] = _ignore


NO_COUNTERS = Counters()


class ForwardedTrack(MediaStreamTrack):
    """The track the sender is given: its loop idles on it, since the packets go past it, and ends
    when the track is stopped."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    async def recv(self) -> Any:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ended.set()


class PacketHistory:
    """The sent packets, as the sender's ``_retransmit`` looks them up (``get(sequence %
    RTP_HISTORY_SIZE)``, an ``RtpPacket``): kept as bytes, parsed only when a NACK asks for one."""

    def __init__(self, extensions_map: Any) -> None:
        self._extensions_map = extensions_map
        self._sent: dict[int, bytes] = {}

    def put(self, sequence_number: int, data: bytes) -> None:
        self._sent[sequence_number % RTP_HISTORY_SIZE] = data

    def get(self, index: int) -> RtpPacket | None:
        data = self._sent.get(index)
        return None if data is None else RtpPacket.parse(data, self._extensions_map)


class KeyframeRelay:
    """Turns the viewer's keyframe requests into PLIs to the sending peer, one per hold-off."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        source: Callable[[], int | None],
        counters: Counters = NO_COUNTERS,
        *,
        holdoff: float = KEYFRAME_HOLDOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receiver = receiver
        self.source = source
        self.counters = counters
        self.holdoff = holdoff
        self.clock = clock
        self._last: float | None = None
        self._tasks = Tasks()

    def request(self) -> None:
        """Ask the sending peer for a keyframe, unless one was asked for less than the hold-off ago.
        Called from the event loop, in the session's context: the task it starts is the session's."""
        now = self.clock()
        if self._last is not None and now - self._last < self.holdoff:
            self._count("coalesced")
            return
        source = self.source()
        if source is None:  # nothing received yet: the first frame the peer sends is a keyframe anyway
            self._count("coalesced")
            return
        self._last = now
        self._count("relayed")
        self._tasks.start(self.receiver._send_rtcp_pli(source))

    def _count(self, result: str) -> None:
        self.counters.keyframe_requests(result)


class Tasks:
    """Tasks started from a synchronous callback, kept until they end (the loop keeps only weak ones)."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._running.add(task)
        task.add_done_callback(self._running.discard)


class FastPath:
    """One DTLS transport's received SRTP, by SSRC, taken from its ICE connection as it arrives.

    Installed on each of the aioice connection's protocols in place of ``datagram_received`` (which
    would first try the datagram as STUN, then queue it for the DTLS transport's task), and on the
    connection in place of ``data_received``, for a protocol that comes later. A datagram whose SSRC
    has no route here goes on as before."""

    def __init__(self, dtls: RTCDtlsTransport, counters: Counters = NO_COUNTERS) -> None:
        self.dtls = dtls
        self.counters = counters
        self.routes: dict[int, Callable[[bytes], None]] = {}
        connection = dtls.transport._connection
        self.nominated: dict[int, Any] = connection._nominated
        self._counts = vars(dtls)
        self._pair: Any = None  # the nominated pair, and how to send to it
        self._sendto: Callable[[bytes, Any], None] | None = None
        self._address: Any = None
        queue = connection.data_received

        def data_received(data: bytes, component: int) -> None:
            if not self.take(data):
                queue(data, component)

        vars(connection)["data_received"] = data_received
        for protocol in connection._protocols:
            if isinstance(protocol, StunProtocol):
                self._install(protocol)

    def _install(self, protocol: StunProtocol) -> None:
        stun_or_queue = protocol.datagram_received

        def datagram_received(data: bytes, address: Any) -> None:
            if not self.take(data):
                stun_or_queue(data, address)

        vars(protocol)["datagram_received"] = datagram_received

    def take(self, data: bytes) -> bool:
        """Forward ``data`` if it is SRTP (not SRTCP: RFC 5761, an RTCP packet type in the second
        byte) of a routed SSRC; False to leave it to aiortc."""
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 209:
            return False
        route = self.routes.get(int.from_bytes(data[8:12], "big"))
        if route is None:
            return False
        try:
            plain = self.dtls._rx_srtp.unprotect(data)
        except pylibsrtp.Error:  # a replay, or forged: aiortc drops these as well
            self.counters.packets_dropped("srtp")
            return True
        counts = self._counts
        counts["_RTCDtlsTransport__rx_bytes"] += len(data)
        counts["_RTCDtlsTransport__rx_packets"] += 1
        route(plain)
        return True

    def send(self, data: bytes) -> None:
        """Send an RTP packet now: what ``RTCDtlsTransport._send_rtp`` does, without awaiting."""
        dtls = self.dtls
        if dtls._state != State.CONNECTED:
            return
        pair = self.nominated.get(1)
        if pair is None:
            return
        if pair is not self._pair:
            self._pair, self._sendto, self._address = pair, pair.protocol.transport.sendto, pair.remote_addr
        protected = dtls._tx_srtp.protect(data)
        assert self._sendto is not None
        self._sendto(protected, self._address)
        counts = self._counts
        counts["_RTCDtlsTransport__tx_bytes"] += len(protected)
        counts["_RTCDtlsTransport__tx_packets"] += 1


def fast_path(dtls: RTCDtlsTransport, counters: Counters = NO_COUNTERS) -> FastPath:
    """The transport's fast path, installed on first use (one per transport: BUNDLE shares it) and
    kept on the transport, so that it goes with it."""
    state = vars(dtls)
    path = state.get(FAST_PATH_ATTRIBUTE)
    if path is None:
        path = state[FAST_PATH_ATTRIBUTE] = FastPath(dtls, counters)
    assert isinstance(path, FastPath)
    return path


def _codec_key(codec: RTCRtpCodecParameters) -> rtp_forwarding.CodecKey:
    return rtp_forwarding.codec_key(codec.mimeType, codec.clockRate, codec.channels, codec.parameters)


def _media_codecs(codecs: list[RTCRtpCodecParameters]) -> list[tuple[int, rtp_forwarding.CodecKey]]:
    return [(c.payloadType, _codec_key(c)) for c in codecs if c.payloadType is not None and not is_rtx(c)]


def _extension_id(parameters: RTCRtpReceiveParameters | RTCRtpSendParameters, uri: str) -> int | None:
    return next((e.id for e in parameters.headerExtensions if e.uri == uri), None)


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


class Forwarder:
    """One received track's packets, forwarded to one sender as they arrive. Runs on the event loop."""

    def __init__(self, receiver: RTCRtpReceiver, counters: Counters = NO_COUNTERS) -> None:
        self.receiver = receiver
        self.counters = counters
        self.kind = receiver.track.kind if receiver.track is not None else "video"
        self.track = ForwardedTrack(self.kind)
        self.keyframes = KeyframeRelay(receiver, self.source, counters)
        state = self._state = vars(receiver)  # the receiver's own attributes: see RECEIVER_INTERNALS
        self._codecs: dict[int | None, RTCRtpCodecParameters] = state["_RTCRtpReceiver__codecs"]
        self._rtx_ssrcs: dict[int, int | None] = state["_RTCRtpReceiver__rtx_ssrc"]
        self._streams: dict[int, StreamStatistics] = state["_RTCRtpReceiver__remote_streams"]
        self._nacks: NackGenerator | None = state["_RTCRtpReceiver__nack_generator"]
        self._active: dict[int, Any] = state["_RTCRtpReceiver__active_ssrc"]
        self._received: RTCRtpReceiveParameters | None = None
        self._sender: RTCRtpSender | None = None
        self._sent: RTCRtpSendParameters | None = None
        self._sender_state: dict[str, Any] | None = None
        self._rewriter: Rewriter | None = None  # set once both ends have their parameters
        self._history: PacketHistory | None = None
        self._rtx: dict[int, int] = {}  # RTX payload type -> the one it repairs
        self._audio_level_id: int | None = None
        self._fast_path: FastPath | None = None
        self._tasks = Tasks()
        self._source_seen = 0.0

    def source(self) -> int | None:
        """The received media SSRC being forwarded."""
        return self._rewriter.source if self._rewriter is not None else None

    # ----------------------------------------------------------------------------- the receiver's end

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """aiortc's ``RTCRtpReceiver.receive()`` (1.16), less the decoder thread."""
        state = self._state
        if state["_RTCRtpReceiver__started"]:
            return
        for codec in parameters.codecs:
            self._codecs[codec.payloadType] = codec
            apt = codec.parameters.get("apt")
            if is_rtx(codec) and isinstance(apt, int) and codec.payloadType is not None:
                self._rtx[codec.payloadType] = apt
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._rtx_ssrcs[encoding.rtx.ssrc] = encoding.ssrc
        self._audio_level_id = _extension_id(parameters, AUDIO_LEVEL_URI)
        self._received = parameters
        self._fast_path = fast_path(self.receiver.transport, self.counters)
        self.receiver.transport._register_rtp_receiver(self.receiver, parameters)
        state["_RTCRtpReceiver__rtcp_task"] = asyncio.ensure_future(self.receiver._run_rtcp())
        state["_RTCRtpReceiver__started"] = True
        self._configure()

    async def handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """What aiortc's DTLS transport routes to the receiver (the way every SSRC comes first):
        forwarded like the rest, and its SSRC routed through the fast path from now on."""
        level = packet.extensions.audio_level
        self.forward_packet(
            Packet(
                bool(packet.marker),
                packet.payload_type,
                packet.sequence_number,
                packet.timestamp,
                packet.ssrc,
                packet.payload,
                packet.padding_size,
                None if level is None else (0x80 if level[0] else 0) | (level[1] & 0x7F),
            )
        )
        if self._fast_path is not None and self._rewriter is not None:
            self._fast_path.routes[packet.ssrc] = self.handle_datagram

    def handle_datagram(self, data: bytes) -> None:
        """A decrypted packet from the fast path."""
        packet = rtp_forwarding.read(data, self._audio_level_id)
        if packet is not None:
            self.forward_packet(packet)

    def forward_packet(self, packet: Packet) -> None:
        if not self.receiver._enabled:
            return
        codec = self._codecs.get(packet.payload_type)
        if codec is None:
            return
        statistics = self._streams.get(packet.ssrc)
        if statistics is None:
            statistics = self._streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        statistics.add(cast(RtpPacket, packet))  # reads sequence_number and timestamp only
        apt = self._rtx.get(packet.payload_type)
        if apt is not None:
            media_ssrc = self._rtx_ssrcs.get(packet.ssrc)
            repaired = None if media_ssrc is None else rtp_forwarding.unwrap_rtx(packet, apt, media_ssrc)
            if repaired is None:
                return
            packet = repaired
        nacks = self._nacks
        if nacks is not None and nacks.add(cast(RtpPacket, packet)):  # reads sequence_number only
            self._tasks.start(self.receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing)))
        now = time.time()
        if now - self._source_seen > SOURCE_REFRESH_S:
            self._source_seen = now
            self._active[packet.ssrc] = aiortc_clock.current_datetime()
        rewriter, fast_path = self._rewriter, self._fast_path
        if rewriter is None or fast_path is None:  # no sender has started: a peer that only sends
            return
        ntp = rtp_forwarding.ntp_time(now)
        previous = rewriter.source
        sent = rewriter.rewrite(packet, ntp)
        if sent is None:
            self.counters.packets_dropped("codec")
            return
        if sent.new_source and previous is not None and self.kind == "video":
            self.keyframes.request()  # the new source's stream may not start with one
        assert self._history is not None and self._sender_state is not None
        self._history.put(sent.sequence_number, sent.data)
        fast_path.send(sent.data)
        sender = self._sender_state
        sender["_RTCRtpSender__ntp_timestamp"] = ntp
        sender["_RTCRtpSender__rtp_timestamp"] = sent.timestamp
        sender["_RTCRtpSender__octet_count"] += sent.payload_size
        sender["_RTCRtpSender__packet_count"] += 1

    async def stop(self, stop_receiver: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._fast_path is not None:
            for ssrc in [s for s, route in self._fast_path.routes.items() if route == self.handle_datagram]:
                del self._fast_path.routes[ssrc]
        self.track.stop()
        await stop_receiver()

    # ----------------------------------------------------------------------------- the sender's end

    def attach(self, sender: RTCRtpSender) -> None:
        """Make ``sender`` send this track's packets, and pass what its viewer asks of them (keyframes,
        retransmissions, bandwidth) to where it can be answered."""
        self._sender = sender
        state = self._sender_state = vars(sender)
        send, handle_rtcp = sender.send, sender._handle_rtcp_packet

        async def send_forwarded(parameters: RTCRtpSendParameters) -> None:
            await send(parameters)
            self._sent = parameters
            self._history = PacketHistory(state["_RTCRtpSender__rtp_header_extensions_map"])
            state["_RTCRtpSender__rtp_history"] = self._history
            self._configure()

        async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                await self._relay_remb(sender, packet)
            await handle_rtcp(packet)

        state["send"] = send_forwarded
        state["_handle_rtcp_packet"] = handle_rtcp_packet
        state["_send_keyframe"] = self.keyframes.request

    async def _relay_remb(self, sender: RTCRtpSender, packet: RtcpPsfbPacket) -> None:
        try:
            bitrate, ssrcs = unpack_remb_fci(packet.fci)
        except ValueError:
            return
        source, rtcp_ssrc = self.source(), self._state["_RTCRtpReceiver__rtcp_ssrc"]
        if sender._ssrc in ssrcs and source is not None and rtcp_ssrc is not None:
            relayed = RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=pack_remb_fci(bitrate, [source])
            )
            await self.receiver._send_rtcp(relayed)

    def _configure(self) -> None:
        received, sent, sender = self._received, self._sent, self._sender
        if received is None or sent is None or sender is None or self._rewriter is not None:
            return
        outgoing = Outgoing(
            ssrc=sender._ssrc,
            payload_types=rtp_forwarding.payload_type_map(
                _media_codecs(received.codecs),
                _media_codecs(sent.codecs),
            ),
            mid=sent.muxId or None,
            mid_id=_extension_id(sent, MID_URI),
            abs_send_time_id=_extension_id(sent, ABS_SEND_TIME_URI),
            audio_level_id=_extension_id(sent, AUDIO_LEVEL_URI),
        )
        self._rewriter = Rewriter(
            outgoing, sequence_origin=random.getrandbits(16), timestamp_origin=random.getrandbits(32)
        )


def forward(receiver: RTCRtpReceiver, counters: Counters = NO_COUNTERS) -> Forwarder:
    """Make ``receiver`` forward its packets, with no decoder thread; ``attach`` a sender to them.
    Call it before the receiver starts (aiortc starts it once DTLS is up, after the ``track`` event)."""
    state = vars(receiver)  # the receiver's own attributes: see RECEIVER_INTERNALS
    if state["_RTCRtpReceiver__started"]:
        raise RuntimeError("the receiver has started: its frames already go to a decoder thread")
    forwarder = Forwarder(receiver, counters)
    stop = receiver.stop

    async def stop_forwarding() -> None:
        await forwarder.stop(stop)

    # Instance attributes: RTCPeerConnection and the DTLS transport call them on the receiver.
    state["receive"] = forwarder.receive
    state["_handle_rtp_packet"] = forwarder.handle_rtp_packet
    state["stop"] = stop_forwarding
    return forwarder


def echo_forwarded(pc: RTCPeerConnection, track: MediaStreamTrack, counters: Counters = NO_COUNTERS) -> RTCRtpSender:
    """Echo the remote ``track`` of ``pc`` back to the peer as the packets it sends; from the
    ``track`` event, which comes before the receiver starts."""
    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
    forwarder = forward(receiver, counters)
    sender = pc.addTrack(forwarder.track)
    forwarder.attach(sender)
    return sender
