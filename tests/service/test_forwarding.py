"""Forwarded echo against the real service process, with real aiortc peers that decode what comes
back: VP8 and H.264 video and Opus audio, keyframes on request, a viewer that joins late, lost
packets resent on NACK, no decoder thread per track on the server; and
``MEDIA_ECHO_MODE=transcode`` still echoing as before.

The peers here see their echo's RTP before aiortc does (``Viewer``): to tell keyframes apart,
to lose packets on purpose, and, for the late joiner, to drop what arrives before it joins, as if
it had not been there.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, unpack_remb_fci

from tests.support.media_process import MediaProcess, media_service
from tests.support.peers import ColourBars, SignalingClient

#: A viewer must recover within this (the issue's bound), measured from its request or its join.
RECOVERY_S = 1.0
#: One echoed packet in this many is lost on purpose by the NACK test.
LOSS_INTERVAL = 7


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    with media_service(tmp_path_factory.mktemp("forward")) as media:
        yield media


@pytest.fixture(scope="module")
def transcoding(tmp_path_factory: pytest.TempPathFactory):
    with media_service(tmp_path_factory.mktemp("transcode"), env={"MEDIA_ECHO_MODE": "transcode"}) as media:
        yield media


def is_vp8_keyframe(payload: bytes) -> bool:
    """The first packet of a VP8 key frame (RFC 7741: S=1, PID=0, and the P bit of the frame 0)."""
    descriptor, data = VpxPayloadDescriptor.parse(payload)
    return bool(descriptor.partition_start and descriptor.partition_id == 0 and data and not data[0] & 1)


@dataclass
class Viewer:
    """One client peer: sends ``ColourBars`` (and/or audio), decodes the echo, counts what it gets."""

    pc: RTCPeerConnection
    session: str = ""
    decoded: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})
    keyframes: list[float] = field(default_factory=list)  # arrival times of echoed VP8 keyframes
    keyframe_requests: list[float] = field(default_factory=list)  # PLI/FIR received by our sender
    bandwidth: list[int] = field(default_factory=list)  # REMB bitrates received for our sender's SSRC
    joined: asyncio.Event = field(default_factory=asyncio.Event)  # until set, the echo is dropped unseen
    media_ssrc: int | None = None  # of the echoed video; retransmissions (RTX) come on another SSRC
    lose: int = 0  # echoed video packets still to lose, one in every LOSS_INTERVAL
    lost: set[int] = field(default_factory=set)  # sequence numbers lost on purpose
    retransmitted: set[int] = field(default_factory=set)  # original sequence numbers that came again in RTX
    seen: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    consumers: set[asyncio.Task[None]] = field(default_factory=set)

    async def wait_decoded(self, kind: str, count: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.decoded[kind] < count:
            assert time.monotonic() < deadline, f"only {self.decoded[kind]} {kind} frames decoded within {timeout}s"
            await asyncio.sleep(0.02)
        return self.decoded[kind]

    def video_receiver(self) -> RTCRtpReceiver:
        return next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")

    def video_sender(self) -> RTCRtpSender:
        return next(t.sender for t in self.pc.getTransceivers() if t.kind == "video")


def make_viewer(
    *, video: str | None = "VP8", audio: bool = False, joined: bool = True, direction: str = "sendrecv"
) -> Viewer:
    viewer = Viewer(RTCPeerConnection())
    if joined:
        viewer.joined.set()
    if video is not None:
        transceiver = viewer.pc.addTransceiver(ColourBars(), direction=direction)
        wanted = ("video/" + video).lower()
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (wanted, "video/rtx")]
        )
        sender = transceiver.sender
        force_keyframe = sender._send_keyframe

        def keyframe_requested() -> None:
            viewer.keyframe_requests.append(time.monotonic())
            force_keyframe()

        vars(sender)["_send_keyframe"] = keyframe_requested
        handle_rtcp = sender._handle_rtcp_packet

        async def see_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
                if sender._ssrc in ssrcs:
                    viewer.bandwidth.append(bitrate)
            await handle_rtcp(packet)

        vars(sender)["_handle_rtcp_packet"] = see_rtcp
        receiver = transceiver.receiver
        handle = receiver._handle_rtp_packet

        async def see(packet: RtpPacket, arrival_time_ms: int) -> None:
            if not viewer.joined.is_set():
                return
            if viewer.media_ssrc is None:
                viewer.media_ssrc = packet.ssrc
            if packet.ssrc != viewer.media_ssrc and len(packet.payload) >= 2:
                viewer.retransmitted.add(int.from_bytes(packet.payload[:2], "big"))  # RFC 4588: the OSN first
            elif packet.ssrc == viewer.media_ssrc:
                viewer.seen += 1
                if viewer.lose and viewer.seen % LOSS_INTERVAL == 0:
                    viewer.lose -= 1
                    viewer.lost.add(packet.sequence_number)
                    return  # as if the network had lost it: aiortc asks for it again (NACK)
            if video == "VP8" and packet.payload and is_vp8_keyframe(packet.payload):
                viewer.keyframes.append(time.monotonic())
            await handle(packet, arrival_time_ms)

        vars(receiver)["_handle_rtp_packet"] = see
    if audio:
        viewer.pc.addTrack(AudioStreamTrack())

    @viewer.pc.on("track")
    def on_track(track: Any) -> None:
        async def consume() -> None:
            try:
                while True:
                    await track.recv()
                    viewer.decoded[track.kind] += 1
            except Exception:  # MediaStreamError when the track ends
                return

        task = asyncio.ensure_future(consume())
        viewer.consumers.add(task)
        task.add_done_callback(viewer.consumers.discard)

    @viewer.pc.on("connectionstatechange")
    def on_state() -> None:
        if viewer.pc.connectionState == "connected":
            viewer.connected.set()

    return viewer


async def open_viewer(client: SignalingClient, viewer: Viewer) -> Viewer:
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    await client.send({"type": "offer", "sdp": viewer.pc.localDescription.sdp})
    answer = await client.recv("answer")
    viewer.session = answer["session"]
    await viewer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await asyncio.wait_for(viewer.connected.wait(), 15)
    return viewer


def thread_groups(media: MediaProcess) -> dict[str, int]:
    """The service's threads by name (numbers folded: ``asyncio_N``), from /debug/tasks."""
    dump = httpx.get(f"{media.admin_url}/debug/tasks", timeout=10).json()
    return {group["name"]: group["count"] for group in dump["thread_groups"]}


def relayed(media: MediaProcess) -> float:
    return media.metric("media_keyframe_requests_total", {"result": "relayed"}) or 0.0


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_video_is_echoed_as_forwarded_frames_that_decode(media: MediaProcess, codec: str, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer(video=codec))
    answer = viewer.pc.remoteDescription.sdp
    assert f" {codec}/90000" in answer and (codec == "H264" or " H264/90000" not in answer)
    assert await viewer.wait_decoded("video", 60) >= 60
    # Forwarded: the service decodes nothing, so it has no decoder thread for the track.
    groups = thread_groups(media)
    assert "video-decoder" not in groups and "audio-decoder" not in groups, groups
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_audio_is_echoed_as_forwarded_opus(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer(video=None, audio=True))
    assert " opus/48000/2" in viewer.pc.remoteDescription.sdp
    assert await viewer.wait_decoded("audio", 50) >= 50  # 20 ms frames: a second of sound
    assert "audio-decoder" not in thread_groups(media)
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_a_keyframe_request_brings_a_keyframe_within_a_second(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer())
    await viewer.wait_decoded("video", 30)
    before = relayed(media)
    # The echo's viewer asks the service for a keyframe (a PLI to its sender, as a browser does
    # when it loses a picture): the service asks our sender, whose next frame is a keyframe.
    receiver = viewer.video_receiver()
    [source] = [s.source for s in receiver.getSynchronizationSources()]
    asked = time.monotonic()
    await receiver._send_rtcp_pli(source)
    deadline = asked + RECOVERY_S
    while not any(t > asked for t in viewer.keyframes):
        assert time.monotonic() < deadline, f"no keyframe within {RECOVERY_S}s of the request"
        await asyncio.sleep(0.01)
    assert any(asked < t < deadline for t in viewer.keyframe_requests), "the request did not reach our sender"
    decoded = viewer.decoded["video"]
    await viewer.wait_decoded("video", decoded + 10)
    media.poll_metric("media_keyframe_requests_total", lambda v: v >= before + 1, labels={"result": "relayed"})
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_a_viewer_that_joins_late_decodes_within_a_second(media: MediaProcess, no_leaks: None) -> None:
    """The echo reaches the viewer's decoder only from the moment it joins, two seconds in: it
    starts in the middle of the stream, cannot decode, asks for a keyframe, and gets one."""
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer(joined=False))
    await asyncio.wait_for(_echo_flowing(viewer), 15)
    assert viewer.decoded["video"] == 0 and not viewer.keyframes
    joined = time.monotonic()
    viewer.joined.set()
    deadline = joined + RECOVERY_S
    while viewer.decoded["video"] == 0:
        assert time.monotonic() < deadline, f"nothing decoded within {RECOVERY_S}s of joining"
        await asyncio.sleep(0.01)
    assert any(t > joined for t in viewer.keyframes)
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def _echo_flowing(viewer: Viewer, timeout: float = 20.0) -> None:
    """Until the echo has been arriving (and dropped) for two seconds of frames."""
    receiver = viewer.video_receiver()
    deadline = time.monotonic() + timeout
    while not any(getattr(s, "packetsReceived", 0) >= 60 for s in (await receiver.getStats()).values()):
        assert time.monotonic() < deadline, f"the echo did not flow within {timeout}s"
        await asyncio.sleep(0.05)


async def test_lost_packets_are_retransmitted_on_nack(media: MediaProcess, no_leaks: None) -> None:
    """The viewer loses echoed packets; its NACKs reach the service's sender, which resends them
    from its history (as RTX), and the picture goes on decoding without a keyframe."""
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer())
    await viewer.wait_decoded("video", 30)
    asked = relayed(media)
    viewer.lose = 5
    deadline = time.monotonic() + 20
    while viewer.lose or not viewer.lost <= viewer.retransmitted:
        assert time.monotonic() < deadline, f"lost {sorted(viewer.lost)}, resent {sorted(viewer.retransmitted)}"
        await asyncio.sleep(0.02)
    decoded = viewer.decoded["video"]
    await viewer.wait_decoded("video", decoded + 30)
    # No keyframe was asked for: the losses were repaired. (Keyframes may still come: aiortc's
    # encoder restarts with one when the bandwidth estimate moves by more than 10 %.)
    assert relayed(media) == asked, "the viewer needed a keyframe: the losses were not repaired"
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_the_viewers_bandwidth_estimate_reaches_the_sending_peer(media: MediaProcess, no_leaks: None) -> None:
    """The service estimates no bandwidth itself: the viewer's REMB (aiortc's receiver sends one
    from the echo's send times) comes back to the sending peer, naming the stream it sends."""
    client = await SignalingClient.connect(media.ws_url)
    viewer = await open_viewer(client, make_viewer())
    await viewer.wait_decoded("video", 30)
    deadline = time.monotonic() + 20
    while not viewer.bandwidth:
        assert time.monotonic() < deadline, "no bandwidth estimate reached the sending peer"
        await asyncio.sleep(0.05)
    assert all(bitrate > 0 for bitrate in viewer.bandwidth)
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_a_peer_that_only_sends_is_asked_for_no_keyframe(media: MediaProcess, no_leaks: None) -> None:
    """Nothing sends its media back (the answer says recvonly): the service forwards nothing, drops
    nothing for a codec, and never asks the peer for a keyframe."""
    client = await SignalingClient.connect(media.ws_url)
    asked = relayed(media)
    dropped = media.metric("media_forwarded_packets_dropped_total", {"reason": "codec"})
    viewer = await open_viewer(client, make_viewer(direction="sendonly"))
    assert "a=recvonly" in viewer.pc.remoteDescription.sdp
    sender = viewer.video_sender()
    deadline = time.monotonic() + 20
    while not any(getattr(s, "packetsSent", 0) >= 150 for s in (await sender.getStats()).values()):
        assert time.monotonic() < deadline, "the peer's video did not flow"
        await asyncio.sleep(0.05)
    assert viewer.keyframe_requests == []
    assert relayed(media) == asked
    assert media.metric("media_forwarded_packets_dropped_total", {"reason": "codec"}) == dropped == 0
    await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_sessions_add_no_threads(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url)
    warm = await open_viewer(client, make_viewer(audio=True))  # threads that come once per process
    await warm.wait_decoded("video", 10)
    await warm.pc.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    idle = thread_groups(media)
    viewers = [await open_viewer(client, make_viewer(audio=True)) for _ in range(3)]
    for viewer in viewers:
        await viewer.wait_decoded("video", 10)
    assert thread_groups(media) == idle
    for viewer in viewers:
        await viewer.pc.close()
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def test_transcode_mode_decodes_and_encodes_again(transcoding: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(transcoding.ws_url)
    viewer = await open_viewer(client, make_viewer())
    assert await viewer.wait_decoded("video", 30) >= 30
    assert thread_groups(transcoding).get("video-decoder") == 1  # aiortc's own path, thread and all
    await viewer.pc.close()
    await client.close()
    transcoding.poll_metric("media_sessions_active", lambda v: v == 0)
