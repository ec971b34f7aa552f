"""Real aiortc peers and a WebSocket signaling client, as a user's client would be."""

from __future__ import annotations

import asyncio
import fractions
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from av import VideoFrame
from websockets.asyncio.client import ClientConnection, connect

from tests.support import media_process

CANDIDATE_LINE = re.compile(r"^a=candidate:.*$", re.MULTILINE)


class ColourBars(VideoStreamTrack):
    """160x120 video at 30 fps whose frames carry a counter, so echoes can be told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.zeros((120, 160, 3), np.uint8)
        image[:, :, self.sent % 3] = 200
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base or fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


class SignalingClient:
    """One WebSocket connection speaking the service's JSON protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls, url: str, user: str = "alice", device: str = "d1", *, token: str | None = None, **kwargs: Any
    ) -> SignalingClient:
        """Connect as ``user`` with a token minted for it (or ``token``), sent as a bearer header."""
        headers = {"Authorization": f"Bearer {token or media_process.token(user)}"}
        return cls(
            await connect(f"{url}?user={user}&device={device}", open_timeout=10, additional_headers=headers, **kwargs)
        )

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self, type_: str | None = None, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The next message of ``type_`` (and fields ``match``); earlier others are kept in inbox."""
        for i, message in enumerate(self.inbox):
            if _matches(message, type_, match):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_} {match} within {timeout}s; got {self.inbox}")
            message = json.loads(await asyncio.wait_for(self.ws.recv(), remaining))
            if _matches(message, type_, match):
                return message
            self.inbox.append(message)

    async def close(self) -> None:
        await self.ws.close()


def _matches(message: dict[str, Any], type_: str | None, match: dict[str, Any]) -> bool:
    return (type_ is None or message.get("type") == type_) and all(message.get(k) == v for k, v in match.items())


@dataclass
class Peer:
    """A client-side peer connection with an echo check for data and video."""

    pc: RTCPeerConnection
    session: str = ""
    video: ColourBars | None = None
    channel: Any = None
    echoed: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    frames_received: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    # Track consumers, referenced so that none is collected mid-run; each ends with its track.
    consumers: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        await self.pc.close()

    async def echo(self, payload: str, timeout: float = 10.0) -> str:
        self.channel.send(payload)
        return await asyncio.wait_for(self.echoed.get(), timeout)

    async def wait_frames(self, count: int, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while self.frames_received < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.frames_received} echoed frames within {timeout}s")
            await asyncio.sleep(0.05)
        return self.frames_received


def make_peer(*, video: bool = False, data: bool = True) -> Peer:
    peer = Peer(RTCPeerConnection())
    if data:
        peer.channel = peer.pc.createDataChannel("echo")
        peer.channel.on("message", peer.echoed.put_nowait)
        peer.channel.on("open", peer.channel_open.set)
    if video:
        peer.video = ColourBars()
        peer.pc.addTrack(peer.video)

    @peer.pc.on("track")
    def on_track(track: Any) -> None:
        async def consume() -> None:
            try:
                while True:
                    await track.recv()
                    peer.frames_received += 1
            except Exception:  # MediaStreamError when the track ends
                return

        task = asyncio.ensure_future(consume())
        peer.consumers.add(task)
        task.add_done_callback(peer.consumers.discard)

    @peer.pc.on("connectionstatechange")
    def on_state() -> None:
        if peer.pc.connectionState == "connected":
            peer.connected.set()

    return peer


async def offer_sdp(peer: Peer, *, trickle: bool = False, setup: str = "actpass") -> tuple[str, list[str]]:
    """The peer's offer; with ``trickle`` its candidates are taken out and returned separately.
    ``setup`` is the DTLS role it offers: ``actpass`` (what aiortc and browsers offer), ``active``
    (the offerer will be the DTLS client) or ``passive`` (the server, as FFmpeg 8 offers)."""
    offer = await peer.pc.createOffer()
    sdp = with_setup(offer.sdp, setup)
    # The offerer's own transports take their role from the answer, whatever its offer said.
    await peer.pc.setLocalDescription(RTCSessionDescription(sdp, "offer"))
    sdp = with_setup(peer.pc.localDescription.sdp, setup)
    if not trickle:
        return sdp, []
    candidates = [line.removeprefix("a=") for line in CANDIDATE_LINE.findall(sdp)]
    sdp = CANDIDATE_LINE.sub("", sdp).replace("\r\n\r\n", "\r\n")
    sdp = re.sub(r"(\r\n)+", "\r\n", sdp).replace("a=end-of-candidates\r\n", "")
    return sdp, candidates


async def open_session(
    client: SignalingClient,
    *,
    video: bool = False,
    data: bool = True,
    trickle: bool = False,
    setup: str = "actpass",
    connect_timeout: float = 15.0,
) -> Peer:
    """Offer over signaling, apply the answer, trickle if asked, wait until connected."""
    peer = make_peer(video=video, data=data)
    sdp, candidates = await offer_sdp(peer, trickle=trickle, setup=setup)
    await client.send({"type": "offer", "sdp": sdp})
    answer = await client.recv("answer")
    peer.session = answer["session"]
    await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    for candidate in candidates:
        await client.send(
            {
                "type": "candidate",
                "session": peer.session,
                "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0},
            }
        )
    if trickle:
        await client.send({"type": "candidate", "session": peer.session, "candidate": None})
    await asyncio.wait_for(peer.connected.wait(), connect_timeout)
    if data:
        await asyncio.wait_for(peer.channel_open.wait(), connect_timeout)
    return peer


def with_setup(sdp: str, setup: str) -> str:
    """``sdp`` with every ``a=setup`` saying ``setup``."""
    return re.sub(r"^a=setup:[a-z]+", f"a=setup:{setup}", sdp, flags=re.MULTILINE)


def without_candidates(sdp: str) -> str:
    """``sdp`` with no candidate lines and no end-of-candidates, as OBS 30.2+ offers over WHIP."""
    return re.sub(r"^a=(candidate:.*|end-of-candidates)\r?\n", "", sdp, flags=re.MULTILINE)


def only_codec(sdp: str, codec: str, payload_type: int = 96) -> str:
    """The offer with its video section offering ``codec`` alone (e.g. one the answerer lacks)."""
    out: list[str] = []
    for line in sdp.splitlines():
        if re.match(r"a=(rtpmap|fmtp|rtcp-fb):", line):
            continue
        if line.startswith("m=video"):
            out += [" ".join([*line.split()[:3], str(payload_type)]), f"a=rtpmap:{payload_type} {codec}/90000"]
        else:
            out.append(line)
    return "\r\n".join(out) + "\r\n"
