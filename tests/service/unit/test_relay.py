"""Forwarding (relay.py) without a network: real aiortc receivers and senders on a stand-in DTLS
transport, fed RTP packets that aiortc's own encoders and packetizers made.

The first tests pin the aiortc internals forwarding relies on (``RECEIVER_INTERNALS``,
``SENDER_INTERNALS``, ``TRANSPORT_INTERNALS``): an aiortc upgrade that renames or reshapes one
fails here, naming it, before any echo test fails with frames that never arrive.
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import threading
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import get_decoder, get_encoder
from aiortc.codecs.h264 import h264_depayload
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpDecodingParameters, RTCRtpReceiveParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPacket, RtcpPsfbPacket, RtpPacket

from media_service.relay import (
    QUEUE_FRAMES,
    RECEIVER_INTERNALS,
    SENDER_INTERNALS,
    TRANSPORT_INTERNALS,
    Counters,
    ForwardedTrack,
    FrameSink,
    KeyframeRelay,
    forward,
    relay_keyframe_requests,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=99,
    parameters={"packetization-mode": "1", "level-asymmetry-allowed": "1", "profile-level-id": "42e01f"},
)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96)
MEDIA_SSRC = 0x1234


class Transport:
    """Stands in for an RTCDtlsTransport: records what the receiver registers and sends."""

    state = "connected"
    _stats_id = "transport"

    def __init__(self) -> None:
        self.registered: list[RTCRtpReceiver] = []
        self.sent: list[bytes] = []

    def _register_rtp_receiver(self, receiver: RTCRtpReceiver, parameters: Any) -> None:
        self.registered.append(receiver)

    def _unregister_rtp_receiver(self, receiver: RTCRtpReceiver) -> None:
        self.registered.remove(receiver)

    def _register_rtp_sender(self, sender: RTCRtpSender, parameters: Any) -> None:
        return None

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)

    def _get_stats(self) -> dict[str, Any]:
        return {}

    def plis(self) -> list[int]:
        """The media SSRCs of the PLIs sent so far."""
        return [
            packet.media_ssrc
            for data in self.sent
            for packet in RtcpPacket.parse(data)
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI
        ]


class Recorder:
    def __init__(self) -> None:
        self.keyframes: list[str] = []
        self.dropped: list[int] = []
        self.counters = Counters(keyframe_requests=self.keyframes.append, frames_dropped=self.dropped.append)


def new_receiver(kind: str, transport: Transport) -> RTCRtpReceiver:
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    receiver = RTCRtpReceiver(kind, transport)  # type: ignore[arg-type]
    receiver._track = RemoteStreamTrack(kind=kind)  # as RTCPeerConnection does before the track event
    receiver._set_rtcp_ssrc(0x9999)
    return receiver


def parameters(codec: RTCRtpCodecParameters) -> RTCRtpReceiveParameters:
    return RTCRtpReceiveParameters(
        codecs=[codec], encodings=[RTCRtpDecodingParameters(ssrc=MEDIA_SSRC, payloadType=codec.payloadType)]
    )


def video_frames(count: int, width: int = 160, height: int = 120) -> list[av.VideoFrame]:
    frames = []
    for index in range(count):
        image = np.full((height, width, 3), (index * 37) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


def audio_frames(count: int) -> list[av.AudioFrame]:
    frames = []
    for index in range(count):
        samples = (np.sin(np.arange(960) / 10 + index) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(samples, 2, axis=0).T.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48000, index * 960, fractions.Fraction(1, 48000)
        frames.append(frame)
    return frames


def rtp_packets(codec: RTCRtpCodecParameters, frames: list[Any], *, first_sequence: int = 1000) -> list[RtpPacket]:
    """The RTP packets an aiortc sender would send for ``frames``, timestamps from 5000."""
    encoder = get_encoder(codec)
    packets = []
    sequence = first_sequence
    for frame in frames:
        payloads, timestamp = encoder.encode(frame, False)
        for index, payload in enumerate(payloads):
            packet = RtpPacket(
                payload_type=codec.payloadType,
                sequence_number=sequence & 0xFFFF,
                timestamp=(5000 + timestamp) & 0xFFFFFFFF,
                ssrc=MEDIA_SSRC,
                marker=int(index == len(payloads) - 1),
            )
            packet.payload = payload
            packets.append(packet)
            sequence += 1
    return packets


async def received(track: ForwardedTrack, count: int) -> list[Any]:
    return [await asyncio.wait_for(track.recv(), 5) for _ in range(count)]


def decoder_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.endswith("-decoder"))


async def forwarded(
    codec: RTCRtpCodecParameters, frames: list[Any], kind: str = "video", recorder: Recorder | None = None
) -> tuple[list[Any], RTCRtpReceiver, Transport, ForwardedTrack]:
    """Feed the RTP of ``frames`` through a forwarding receiver; the packets its track returns.
    A video frame is complete when the next one starts, so the last one stays in the jitter buffer,
    and audio's buffer prefetches 4."""
    transport = Transport()
    receiver = new_receiver(kind, transport)
    threads = decoder_threads()
    forwarding = forward(receiver, (recorder or Recorder()).counters)
    await receiver.receive(parameters(codec))
    assert transport.registered == [receiver]
    assert decoder_threads() == threads, "forwarding started a decoder thread"
    # The sender asks for its first frame before the receiver starts, as in RTCPeerConnection.
    reading = asyncio.ensure_future(received(forwarding.track, len(frames) - (1 if kind == "video" else 4)))
    while not forwarding.track.read:
        await asyncio.sleep(0)
    for packet in rtp_packets(codec, frames):
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
    return await reading, receiver, transport, forwarding.track


# ----------------------------------------------------------------------------- aiortc's internals


def test_the_receiver_internals_forwarding_relies_on_exist() -> None:
    receiver = RTCRtpReceiver("video", Transport())  # type: ignore[arg-type]
    attributes = set(vars(receiver)) | set(dir(receiver))
    missing = [name for name in RECEIVER_INTERNALS if name not in attributes]
    assert not missing, f"aiortc's RTCRtpReceiver no longer has {missing}: update media_service/relay.py"
    assert vars(receiver)["_RTCRtpReceiver__decoder_thread"] is None
    assert vars(receiver)["_RTCRtpReceiver__started"] is False


async def test_the_sender_asks_for_a_keyframe_through_send_keyframe_on_pli_and_fir() -> None:
    sender = RTCRtpSender("video", Transport())  # type: ignore[arg-type]
    missing = [name for name in SENDER_INTERNALS if not hasattr(sender, name)]
    assert not missing, f"aiortc's RTCRtpSender no longer has {missing}: update media_service/relay.py"
    asked: list[str] = []
    vars(sender)["_send_keyframe"] = lambda: asked.append("keyframe")
    for fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
        await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=fmt, ssrc=1, media_ssrc=sender._ssrc))
    assert asked == ["keyframe", "keyframe"], "aiortc's sender no longer calls _send_keyframe on PLI and FIR"


def test_the_dtls_transport_still_registers_rtp_receivers() -> None:
    missing = [name for name in TRANSPORT_INTERNALS if not hasattr(RTCDtlsTransport, name)]
    assert not missing, f"aiortc's RTCDtlsTransport no longer has {missing}: update media_service/relay.py"


async def test_a_started_receiver_cannot_be_forwarded(no_leaks: None) -> None:
    transport = Transport()
    receiver = new_receiver("video", transport)
    await receiver.receive(parameters(VP8))  # aiortc's own: starts a decoder thread
    with pytest.raises(RuntimeError, match="started"):
        forward(receiver)
    await receiver.stop()


# ----------------------------------------------------------------------------- the media path


@pytest.mark.parametrize(("codec", "depayload"), [(VP8, vp8_depayload), (H264, h264_depayload)], ids=["VP8", "H264"])
async def test_video_is_forwarded_encoded_and_decodes_after_repacketizing(
    codec: RTCRtpCodecParameters, depayload: Any, no_leaks: None
) -> None:
    frames = video_frames(12)
    packets, receiver, _, _ = await forwarded(codec, frames)
    # Timestamps from 0 in the RTP clock (the sender adds its own origin), one frame per 1/30 s.
    assert packets[0].pts == 0
    assert all(2990 < b.pts - a.pts < 3010 for a, b in itertools.pairwise(packets))
    assert all(p.time_base == fractions.Fraction(1, 90000) for p in packets)
    # What the service's sender sends for them decodes, picture by picture, at the size sent.
    sender_side, decoder = get_encoder(codec), get_decoder(codec)
    decoded = []
    for packet in packets:
        payloads, timestamp = sender_side.pack(packet)
        assert timestamp == packet.pts
        data = b"".join(depayload(payload) for payload in payloads)
        decoded += decoder.decode(JitterFrame(data, timestamp))
    assert [(f.width, f.height) for f in decoded] == [(160, 120)] * 11
    await receiver.stop()


async def test_opus_is_forwarded_packet_for_packet(no_leaks: None) -> None:
    frames = audio_frames(10)
    encoder = get_encoder(OPUS)
    sent = [encoder.encode(frame, False)[0] for frame in audio_frames(10)]
    packets, receiver, _, _ = await forwarded(OPUS, frames, kind="audio")
    assert [bytes(p) for p in packets] == [payloads[0] for payloads in sent[:6]]
    assert [p.pts for p in packets] == [i * 960 for i in range(6)]
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in packets)
    await receiver.stop()


async def test_stopping_the_receiver_ends_the_forwarded_track(no_leaks: None) -> None:
    _, receiver, transport, track = await forwarded(VP8, video_frames(3))
    await receiver.stop()
    assert transport.registered == []
    with pytest.raises(MediaStreamError):  # the last frame never completed: the end comes next
        await asyncio.wait_for(track.recv(), 5)
    assert track.readyState == "ended"


# ----------------------------------------------------------------------------- keyframes


async def test_a_viewers_keyframe_request_becomes_a_pli_to_the_sending_peer(no_leaks: None) -> None:
    recorder = Recorder()
    _, receiver, transport, _ = await forwarded(VP8, video_frames(3), recorder=recorder)
    now = 100.0
    keyframes = KeyframeRelay(receiver, recorder.counters, holdoff=0.25, clock=lambda: now)
    sender = RTCRtpSender("video", Transport())  # type: ignore[arg-type]
    relay_keyframe_requests(sender, keyframes)
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=sender._ssrc))
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=sender._ssrc))
    now = 100.3
    await sender._handle_rtcp_packet(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=sender._ssrc))
    while len(transport.plis()) < 2:
        await asyncio.sleep(0)
    assert transport.plis() == [MEDIA_SSRC, MEDIA_SSRC]
    assert recorder.keyframes == ["relayed", "coalesced", "relayed"]
    await receiver.stop()


async def test_a_sender_that_falls_behind_starts_over_at_a_keyframe(no_leaks: None) -> None:
    recorder = Recorder()
    transport = Transport()
    receiver = new_receiver("video", transport)
    forwarding = forward(receiver, recorder.counters)
    await receiver.receive(parameters(VP8))
    first = asyncio.ensure_future(forwarding.track.recv())  # a sender reads the track
    while not forwarding.track.read:
        await asyncio.sleep(0)
    for packet in rtp_packets(VP8, video_frames(2)):
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)  # the first frame is complete
    await asyncio.wait_for(first, 5)
    sink = vars(receiver)["_RTCRtpReceiver__decoder_queue"]
    assert isinstance(sink, FrameSink)
    sink.capacity = 3
    for timestamp in range(4):  # the fourth finds three queued
        sink.put((VP8, JitterFrame(b"x", timestamp)))
    assert forwarding.track._queue.qsize() == 1 and recorder.dropped == [3]
    while not transport.plis():
        await asyncio.sleep(0)
    assert transport.plis() == [MEDIA_SSRC] and recorder.keyframes == ["relayed"]
    await receiver.stop()


async def test_frames_no_sender_reads_are_dropped_without_a_keyframe_request(no_leaks: None) -> None:
    recorder = Recorder()
    transport = Transport()
    receiver = new_receiver("video", transport)
    forwarding = forward(receiver, recorder.counters)
    await receiver.receive(parameters(VP8))
    for packet in rtp_packets(VP8, video_frames(QUEUE_FRAMES + 10)):
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
    assert forwarding.track._queue.qsize() == 0
    assert recorder.dropped == [] and recorder.keyframes == [] and transport.plis() == []
    await receiver.stop()
