"""Offers bounded in complexity before aiortc sees them, and audio/video
sections bounded per session and per process, since aiortc may hold an OS thread for each
On the real process, with its event loop probed on the admin port's /health."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from aiortc import RTCPeerConnection

from tests.service.test_bounds import threads_of
from tests.support.media_process import media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp, open_session

CORPUS = Path(__file__).parent / "sdp_corpus"


def sections_offer(count: int) -> str:
    """An audio offer of ``count`` minimal sections (about 57 KB for 600), each with its own mid,
    all in the BUNDLE, credentials at session level: the shape that cost 0.48 s of event loop."""
    full = (CORPUS / "aiortc-audio-video-data.sdp").read_bytes().decode()
    session = [line for line in full.split("\r\n") if line.startswith(("a=ice-", "a=fingerprint:sha-256", "a=setup"))]
    head = [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(map(str, range(count))),
    ]
    section = "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{}\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\n"
    return "\r\n".join([*head, *dict.fromkeys(session)]) + "\r\n" + "".join(section.format(i) for i in range(count))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


async def health_latencies(admin_url: str, stop: asyncio.Event) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=admin_url, timeout=10) as http:
        while not stop.is_set():
            started = time.monotonic()
            assert (await http.get("/health")).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    return latencies


async def test_complex_offers_are_refused_before_aiortc_and_the_loop_stays_prompt(
    tmp_path: Path, no_leaks: None
) -> None:
    """Six clients looping offers of hundreds of sections pushed /health past 2 s; now each is refused at once."""
    offer = sections_offer(600)
    assert 50_000 < len(json.dumps(offer)) < 65_000  # under MEDIA_WS_MAX_MESSAGE_BYTES: aiortc would see it
    async with media_service_async(tmp_path, env={"MEDIA_MAX_OFFER_BYTES": "65536"}) as media:
        clients = [await SignalingClient.connect(media.ws_url, device=f"d{i}") for i in range(6)]
        stop = asyncio.Event()
        probe = asyncio.create_task(health_latencies(media.admin_url, stop))

        async def loop(client: SignalingClient) -> list[str]:
            messages = []
            for _ in range(20):  # 20 × 0.05 s: under the rate limit of 50 a second
                await client.send({"type": "offer", "sdp": offer})
                error = await client.recv("error", timeout=30)
                messages.append(f"{error['code']}: {error['message']}")
                await asyncio.sleep(0.05)
            return messages

        results = await asyncio.gather(*(loop(c) for c in clients))
        stop.set()
        latencies = await probe
        for messages in results:
            assert all(
                m.startswith("bad_request: offer rejected: more than MEDIA_MAX_OFFER_SECTIONS (8)") for m in messages
            )
        assert max(latencies) < 0.5, f"/health took up to {max(latencies):.2f}s"
        assert media.metric("media_sessions_created_total") == 0
        rss = rss_kib(media.proc.pid)
        assert rss < 300 * 1024, f"RSS {rss} KiB"
        for client in clients:
            await client.close()


async def tracks_offer(audio: int, video: int) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    for _ in range(audio):
        pc.addTransceiver("audio")
    for _ in range(video):
        pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_audio_video_sections_are_capped_per_offer_and_per_process(tmp_path: Path, no_leaks: None) -> None:
    """Four sessions of 500 sections made 2,001 threads; now an offer holds at most
    MEDIA_MAX_OFFER_TRACKS and the process MEDIA_MAX_TRACKS, data channels aside."""
    env = {"MEDIA_MAX_OFFER_TRACKS": "2", "MEDIA_MAX_TRACKS": "3"}
    async with media_service_async(tmp_path, env=env) as media:
        pid = media.proc.pid
        client = await SignalingClient.connect(media.ws_url)
        idle_threads = threads_of(pid)

        pc, sdp = await tracks_offer(audio=2, video=1)
        await client.send({"type": "offer", "sdp": sdp})
        error = await client.recv("error")
        assert error["code"] == "bad_request" and "over MEDIA_MAX_OFFER_TRACKS (2)" in error["message"]
        await pc.close()

        # Three connected video sessions fill the process's three tracks; a fourth must wait.
        peers = [await open_session(client, video=True) for _ in range(3)]
        for peer in peers:
            await peer.wait_frames(5)
        extra = make_peer(video=True, data=False)
        await client.send({"type": "offer", "sdp": (await offer_sdp(extra))[0]})
        error = await client.recv("error")
        assert error["code"] == "session_limit" and "MEDIA_MAX_TRACKS (3)" in error["message"]
        await extra.close()
        # A data-only session holds no track: still welcome.
        data_only = await open_session(client)
        assert await data_only.echo("room") == "room"
        assert threads_of(pid) < idle_threads + 40, f"threads {idle_threads} -> {threads_of(pid)}"

        # A closed session gives its tracks back.
        await client.send({"type": "bye", "session": peers[0].session})
        await client.recv("bye", session=peers[0].session)
        replacement = await open_session(client, video=True)
        for peer in [*peers, data_only, replacement]:
            await peer.close()
        await client.close()
