"""Echo media as the encoded frames the peer sent: no decode, no encode on the server.

aiortc's ``RTCRtpReceiver`` reassembles every received frame in its jitter buffer (sending NACKs
for the packets it misses) and hands it to a decoder thread of its own, one OS thread per received
track; the track's ``recv()`` then returns decoded pictures and samples, which the sender encodes
again. Its ``RTCRtpSender`` also takes an ``av.Packet`` from a track, and then only packetizes it
(``Encoder.pack``, the path of ``MediaPlayer(decode=False)``). An echo that forwards joins those
two ends and leaves the codecs out:

- ``forward(receiver, sender)`` gives the receiver a ``receive()`` that does what aiortc's does
  except start the decoder thread, and puts, in place of the thread's input queue, a
  ``FrameSink`` that turns each reassembled frame into an ``av.Packet`` (payload as received,
  ``pts`` the RTP timestamp from 0, ``time_base`` 1/clock rate) for a ``ForwardedTrack``;
- the sender is given that track: it packetizes each packet for the negotiated codec, with its
  own SSRC, sequence numbers, timestamp origin and retransmission history (NACKs from the viewer
  are answered from it, as before);
- a keyframe request (PLI or FIR) that reaches the sender, which could only force its encoder's
  next frame to be a keyframe, becomes a PLI to the peer that sends the media (``KeyframeRelay``),
  at most one every ``KEYFRAME_HOLDOFF`` seconds: the one encoder that can make a keyframe is
  the sending peer's.

A frame that cannot be queued (the sender has fallen ``QUEUE_FRAMES`` behind) empties the queue
and asks for a keyframe, so the viewer resumes from a clean picture instead of decoding a stream
with holes. Frames of a track no sender reads (a peer that only sends) are dropped as they come:
aiortc's own path would queue every decoded picture for ever.

This relies on aiortc internals, named in ``RECEIVER_INTERNALS`` and ``SENDER_INTERNALS``;
``tests/service/unit/test_relay.py`` checks each of them against the installed aiortc and fails
loudly, naming the one that changed, on an upgrade that moves them.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters

from media_common import logs

log = logs.get("media_service.relay")

if TYPE_CHECKING:
    from av.stream import Stream

    Packet = av.Packet[Stream]
else:
    Packet = av.Packet

#: Frames queued for the sender; past this the sender is behind and the queue starts over at a keyframe.
QUEUE_FRAMES = 64
#: Seconds between two keyframe requests relayed to the sending peer; requests in between are coalesced.
KEYFRAME_HOLDOFF = 0.25

#: What forwarding reads or replaces in an ``RTCRtpReceiver`` (name-mangled private attributes and
#: methods of aiortc 1.16), checked by the contract test.
RECEIVER_INTERNALS = (
    "_RTCRtpReceiver__codecs",  # payload type -> codec, filled by receive()
    "_RTCRtpReceiver__rtx_ssrc",  # RTX SSRC -> media SSRC, filled by receive()
    "_RTCRtpReceiver__decoder_queue",  # where _handle_rtp_packet puts (codec, frame); None at the end
    "_RTCRtpReceiver__decoder_thread",  # _handle_rtp_packet forwards frames only while it is truthy
    "_RTCRtpReceiver__rtcp_task",  # the receiver reports task receive() starts and stop() awaits
    "_RTCRtpReceiver__started",
    "_run_rtcp",
    "_send_rtcp_pli",
)
#: What forwarding replaces in an ``RTCRtpSender``: ``_handle_rtcp_packet`` calls it on PLI and FIR.
SENDER_INTERNALS = ("_send_keyframe",)
#: What the replaced ``receive()`` calls on the receiver's ``RTCDtlsTransport``, as aiortc's does.
TRANSPORT_INTERNALS = ("_register_rtp_receiver",)


def _ignore(_: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Counters:
    """Where forwarding reports (the service's metrics): keyframe requests by result
    (``relayed``, ``coalesced``), and frames dropped because the sender fell behind."""

    keyframe_requests: Callable[[str], None] = _ignore
    frames_dropped: Callable[[int], None] = _ignore


NO_COUNTERS = Counters()


class ForwardedTrack(MediaStreamTrack):
    """A track whose ``recv()`` returns the peer's encoded frames as ``av.Packet``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.read = False  # a sender has asked for a frame: it sends what is queued
        self._queue: asyncio.Queue[Packet | None] = asyncio.Queue()

    async def recv(self) -> Packet:  # aiortc's senders take packets as well as frames
        self.read = True
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet


class FrameSink:
    """Stands in for the decoder thread's input queue: ``put((codec, frame))`` with each frame the
    jitter buffer completes, ``put(None)`` when the receiver stops. Runs on the event loop."""

    def __init__(self, track: ForwardedTrack, on_overflow: Callable[[int], None], capacity: int = QUEUE_FRAMES) -> None:
        self.track = track
        self.on_overflow = on_overflow
        self.capacity = capacity
        self._time_bases: dict[int, fractions.Fraction] = {}

    def put(self, item: tuple[RTCRtpCodecParameters, Any] | None) -> None:
        queue = self.track._queue
        if item is None:
            queue.put_nowait(None)
            return
        codec, frame = item
        if not self.track.read:
            # No sender reads this track (a peer that only sends: the answer says recvonly), and
            # none will start in the middle of the stream: drop it, and ask for no keyframe.
            return
        if queue.qsize() >= self.capacity:
            dropped = queue.qsize()
            while not queue.empty():
                queue.get_nowait()
            self.on_overflow(dropped)
        queue.put_nowait(to_packet(frame.data, frame.timestamp, self._time_base(codec.clockRate)))

    def _time_base(self, clock_rate: int) -> fractions.Fraction:
        time_base = self._time_bases.get(clock_rate)
        if time_base is None:
            time_base = self._time_bases[clock_rate] = fractions.Fraction(1, clock_rate)
        return time_base


def to_packet(data: bytes, timestamp: int, time_base: fractions.Fraction) -> Packet:
    """An encoded frame as the sender's ``Encoder.pack`` takes it: ``pts`` in ``time_base``."""
    packet = av.Packet(data)
    packet.pts = timestamp
    packet.time_base = time_base
    return packet


class KeyframeRelay:
    """Turns the viewer's keyframe requests into PLIs to the sending peer, one per hold-off."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        counters: Counters = NO_COUNTERS,
        *,
        holdoff: float = KEYFRAME_HOLDOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receiver = receiver
        self.counters = counters
        self.holdoff = holdoff
        self.clock = clock
        self._last: float | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def request(self) -> None:
        """Ask the sending peer for a keyframe, unless one was asked for less than the hold-off ago.
        Called from the event loop, in the session's context: the task it starts is the session's."""
        now = self.clock()
        if self._last is not None and now - self._last < self.holdoff:
            self._count("coalesced")
            return
        sources = [source.source for source in self.receiver.getSynchronizationSources()]
        if not sources:  # nothing received yet: the first frame the peer sends is a keyframe anyway
            self._count("coalesced")
            return
        self._last = now
        self._count("relayed")
        task = asyncio.get_running_loop().create_task(self._send(sources))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, sources: list[int]) -> None:
        send_pli = self.receiver._send_rtcp_pli
        for ssrc in sources:
            await send_pli(ssrc)

    def _count(self, result: str) -> None:
        self.counters.keyframe_requests(result)


class _NoDecoderThread:
    """Takes the decoder thread's place: truthy, so the receiver hands its frames on; nothing to join."""

    def join(self, timeout: float | None = None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What ``forward`` set up: the track to send, and the relay of keyframe requests."""

    track: ForwardedTrack
    keyframes: KeyframeRelay


def forward(receiver: RTCRtpReceiver, counters: Counters = NO_COUNTERS) -> Forwarding:
    """Make ``receiver`` deliver its frames encoded, to the returned track, with no decoder thread.
    Call it before the receiver starts (aiortc starts it once DTLS is up, after the ``track`` event)."""
    state = vars(receiver)  # the receiver's own attributes: see RECEIVER_INTERNALS
    if state["_RTCRtpReceiver__started"]:
        raise RuntimeError("the receiver has started: its frames already go to a decoder thread")
    kind = receiver.track.kind if receiver.track is not None else "video"
    track = ForwardedTrack(kind)
    keyframes = KeyframeRelay(receiver, counters)

    def overflow(dropped: int) -> None:
        counters.frames_dropped(dropped)
        if kind == "video":
            keyframes.request()

    sink = FrameSink(track, overflow)

    async def receive(parameters: RTCRtpReceiveParameters) -> None:
        # aiortc's RTCRtpReceiver.receive() (1.16), less the decoder thread.
        if state["_RTCRtpReceiver__started"]:
            return
        codecs: dict[int | None, RTCRtpCodecParameters] = state["_RTCRtpReceiver__codecs"]
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        rtx_ssrc: dict[int, int | None] = state["_RTCRtpReceiver__rtx_ssrc"]
        for encoding in parameters.encodings:
            if encoding.rtx:
                rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        state["_RTCRtpReceiver__decoder_queue"] = sink
        state["_RTCRtpReceiver__decoder_thread"] = _NoDecoderThread()
        receiver.transport._register_rtp_receiver(receiver, parameters)
        state["_RTCRtpReceiver__rtcp_task"] = asyncio.ensure_future(receiver._run_rtcp())
        state["_RTCRtpReceiver__started"] = True

    state["receive"] = receive  # an instance attribute: RTCPeerConnection calls receiver.receive()
    return Forwarding(track, keyframes)


def relay_keyframe_requests(sender: RTCRtpSender, keyframes: KeyframeRelay) -> None:
    """Have ``sender`` pass the PLIs and FIRs it receives to ``keyframes``: with encoded frames to
    send, it has no encoder to force a keyframe out of."""
    vars(sender)["_send_keyframe"] = keyframes.request


def echo_forwarded(pc: RTCPeerConnection, track: MediaStreamTrack, counters: Counters = NO_COUNTERS) -> RTCRtpSender:
    """Echo the remote ``track`` of ``pc`` back to the peer as the encoded frames it sends; from
    the ``track`` event, which comes before the receiver starts."""
    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
    forwarding = forward(receiver, counters)
    sender = pc.addTrack(forwarding.track)
    relay_keyframe_requests(sender, forwarding.keyframes)
    return sender
