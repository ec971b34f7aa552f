"""Video echo: forwarding against transcoding against aiortc's example server, side by side, one run.

Three servers, each a fresh real process on 127.0.0.1, one after the other for each picture size:

- **forward**: ``python -m media_service`` with its default ``MEDIA_ECHO_MODE=forward``;
- **transcode**: the same with ``MEDIA_ECHO_MODE=transcode`` (aiortc's decode and encode);
- **naive**: ``bench/naive_server.py``, the pattern of aiortc's own example server.

Each gets ``--streams`` (8) video sessions at 30 fps, VP8, at 160x120 and at 640x480. The client
peers (this process) must not be what limits the figures on a shared machine, so they neither
encode nor decode: each sends a 2-second loop of frames encoded once, up front, by aiortc's own
VP8 encoder (a keyframe, then 59 inter frames, of a moving picture), and takes the echo through
the service's ``relay.forward`` (no decoder thread, no jitter buffer), counting the packets that
end a frame (RTP marker bit). The servers cannot tell: what arrives is ordinary VP8 over RTP.

Server CPU is the process's utime+stime from /proc (each also reported apart) over a fixed
window (``--window``, 10 s) once every echo flows, less the same process's idle rate measured
before the sessions: CPU time, not wall time, so that the other work on the machine slows it
down without inflating it. The echoed frame rate is reported beside it (a server that cannot keep
up shows fewer frames, not less CPU per frame: ``cpu_ms_per_echoed_frame``), and the load average
says how contended the machine was.
Threads and RSS per session are (held - idle) / streams.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/forward.py`` (``--quick``:
2 streams, 3 s windows). Prints one JSON document on stdout, progress on stderr. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media_service.ice import restrict_host_addresses
from media_service.relay import forward
from tests.support.media_process import start_media_service, stop_media_service
from tests.support.peers import SignalingClient
from tests.support.ports import free_port

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
FPS = 30
LOOP_FRAMES = 60  # a keyframe every 2 s: what a transcoding server decodes stays decodable
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97)
SIZES = ((160, 120), (640, 480))
SERVERS = ("forward", "transcode", "naive")
TARGETS = {"forward_cpu_pct_per_640x480_stream": 0.3, "forward_over_transcode": 0.1, "forward_threads_per_session": 0}


def say(message: str) -> None:
    print(f"[forward {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ProcSample:
    threads: int
    rss_kb: int
    user_ticks: int
    system_ticks: int

    @property
    def cpu_ticks(self) -> int:
        return self.user_ticks + self.system_ticks


def proc_sample(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()
    return ProcSample(
        threads=int(fields["Threads"].strip()),
        rss_kb=int(fields["VmRSS"].split()[0]),
        user_ticks=int(after_name[11]),
        system_ticks=int(after_name[12]),
    )


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# ----------------------------------------------------------------------------- the client peers


def encoded_loop(width: int, height: int) -> list[bytes]:
    """``LOOP_FRAMES`` frames of a moving picture, encoded once by aiortc's VP8 encoder."""
    encoder = get_encoder(VP8)
    frames = []
    y, x = np.mgrid[0:height, 0:width]
    for index in range(LOOP_FRAMES):
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :, 0] = (x * 2 + index * 4) % 256
        image[:, :, 1] = (y * 2 + index * 3) % 256
        image[:, :, 2] = ((x + y) // 4 + index * 8) % 256
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, index == 0)
        frames.append(b"".join(vp8_depayload(p) for p in payloads))
    return frames


class LoopTrack(MediaStreamTrack):
    """Sends the pre-encoded loop at 30 fps as packets: the sender packetizes, nothing encodes."""

    kind = "video"

    def __init__(self, frames: list[bytes]) -> None:
        super().__init__()
        self.frames = frames
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self.sent / FPS - time.monotonic()))
        packet = av.Packet(self.frames[self.sent % len(self.frames)])
        packet.pts, packet.time_base = self.sent * 3000, fractions.Fraction(1, 90000)
        self.sent += 1
        return packet


@dataclass
class Stream:
    pc: RTCPeerConnection
    track: LoopTrack
    echoed: int = 0
    client: SignalingClient | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)


def new_stream(frames: list[bytes]) -> Stream:
    stream = Stream(RTCPeerConnection(), LoopTrack(frames))
    transceiver = stream.pc.addTransceiver(stream.track, direction="sendrecv")
    transceiver.setCodecPreferences(
        [c for c in transceiver.sender.getCapabilities("video").codecs if c.mimeType in ("video/VP8", "video/rtx")]
    )

    @stream.pc.on("track")
    def on_track(remote: MediaStreamTrack) -> None:
        # Take the echo as packets (no decoder thread, no jitter buffer, no decode), and count its
        # frames: the packets that end one (the marker bit).
        receiver = next(t.receiver for t in stream.pc.getTransceivers() if t.receiver.track is remote)
        handle = forward(receiver).handle_rtp_packet

        async def count(packet: RtpPacket, arrival_time_ms: int) -> None:
            stream.echoed += packet.marker
            await handle(packet, arrival_time_ms)

        vars(receiver)["_handle_rtp_packet"] = count

    @stream.pc.on("connectionstatechange")
    def on_state() -> None:
        if stream.pc.connectionState == "connected":
            stream.connected.set()

    return stream


# ----------------------------------------------------------------------------- the servers


@dataclass
class Server:
    name: str
    pid: int
    url: str

    async def open(self, stream: Stream) -> None:
        await stream.pc.setLocalDescription(await stream.pc.createOffer())
        offer = stream.pc.localDescription.sdp
        if self.name == "naive":
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{self.url}/offer", json={"sdp": offer, "type": "offer"}) as response,
            ):
                response.raise_for_status()
                answer = (await response.json())["sdp"]
        else:
            stream.client = await SignalingClient.connect(self.url, user=f"bench{id(stream)}", device="d1")
            await stream.client.send({"type": "offer", "sdp": offer})
            answer = (await stream.client.recv("answer", timeout=20))["sdp"]
        await stream.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(stream.connected.wait(), 20)

    async def close(self, stream: Stream) -> None:
        await stream.pc.close()
        if stream.client is not None:
            await stream.client.close()


@contextlib.asynccontextmanager
async def running(name: str, workdir: Path) -> AsyncIterator[Server]:
    if name == "naive":
        port = free_port(HOST)
        with (workdir / f"naive-{port}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH_DIR / "naive_server.py"), "--host", HOST, "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            async with aiohttp.ClientSession() as http:
                while True:
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with http.get(f"http://{HOST}:{port}/stats") as response:
                            if response.status == 200:
                                break
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the naive server did not start")
                    await asyncio.sleep(0.05)
            yield Server(name, proc.pid, f"http://{HOST}:{port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
    else:
        env = {"MEDIA_ECHO_MODE": name, "MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "100000"}
        media = await asyncio.to_thread(start_media_service, workdir, host=HOST, env=env)
        try:
            yield Server(name, media.proc.pid, media.ws_url)
        finally:
            await asyncio.to_thread(stop_media_service, media, 15.0)


# ----------------------------------------------------------------------------- one measurement


async def cpu_rate(pid: int, seconds: float) -> tuple[float, float]:
    """The process's user and system CPU over ``seconds``, each in % of one core."""
    before, start = proc_sample(pid), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = proc_sample(pid), time.monotonic() - start
    scale = 100 / CLK_TCK / elapsed
    return (after.user_ticks - before.user_ticks) * scale, (after.system_ticks - before.system_ticks) * scale


async def measure(name: str, size: tuple[int, int], frames: list[bytes], streams: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as workdir:
        async with running(name, Path(workdir)) as server:
            # Warm-up: one session opened and closed, so that lazy imports and codec set-up stay out.
            warm = new_stream(frames)
            await server.open(warm)
            while warm.echoed < 10:
                await asyncio.sleep(0.05)
            await server.close(warm)
            await asyncio.sleep(1.0)
            idle = proc_sample(server.pid)
            idle_user, idle_system = await cpu_rate(server.pid, min(window, 3.0))
            held = [new_stream(frames) for _ in range(streams)]
            try:
                await asyncio.gather(*(server.open(s) for s in held))
                deadline = time.monotonic() + 30
                while min(s.echoed for s in held) < FPS and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                echoed_before = sum(s.echoed for s in held)
                sent_before = sum(s.track.sent for s in held)
                client_before = own_cpu_seconds()
                start = time.monotonic()
                busy_user, busy_system = await cpu_rate(server.pid, window)
                elapsed = time.monotonic() - start
                client_cpu = (own_cpu_seconds() - client_before) / elapsed * 100
                echoed_fps = (sum(s.echoed for s in held) - echoed_before) / elapsed / streams
                sent_fps = (sum(s.track.sent for s in held) - sent_before) / elapsed / streams
                busy = proc_sample(server.pid)
            finally:
                for s in held:
                    await server.close(s)
    idle_cpu, busy_cpu = idle_user + idle_system, busy_user + busy_system
    per_stream = max(0.0, busy_cpu - idle_cpu) / streams
    return {
        "server": name,
        "size": f"{size[0]}x{size[1]}",
        "streams": streams,
        "cpu_pct_per_stream": round(per_stream, 3),
        "cpu_user_pct_per_stream": round(max(0.0, busy_user - idle_user) / streams, 3),
        "cpu_system_pct_per_stream": round(max(0.0, busy_system - idle_system) / streams, 3),
        "cpu_ms_per_echoed_frame": round(per_stream * 10 / echoed_fps, 3) if echoed_fps else None,
        "server_cpu_pct_idle": round(idle_cpu, 2),
        "server_cpu_pct_busy": round(busy_cpu, 2),
        "sent_fps_per_stream": round(sent_fps, 1),
        "echoed_fps_per_stream": round(echoed_fps, 1),
        "threads_per_session": round((busy.threads - idle.threads) / streams, 2),
        "rss_mb_per_session": round((busy.rss_kb - idle.rss_kb) / 1024 / streams, 2),
        "threads_idle": idle.threads,
        "threads_busy": busy.threads,
        "client_cpu_pct_total": round(client_cpu, 1),
        "loadavg_after": os.getloadavg(),
    }


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    def find(server: str, size: str) -> dict[str, Any] | None:
        return next((r for r in results if r["server"] == server and r["size"] == size), None)

    out: dict[str, Any] = {}
    for size in ("160x120", "640x480"):
        fwd, tra, nai = find("forward", size), find("transcode", size), find("naive", size)
        if fwd and tra and tra["cpu_ms_per_echoed_frame"]:
            out[f"forward_over_transcode_{size}"] = round(
                fwd["cpu_ms_per_echoed_frame"] / tra["cpu_ms_per_echoed_frame"], 3
            )
        if fwd and nai and nai["cpu_ms_per_echoed_frame"]:
            out[f"forward_over_naive_{size}"] = round(
                fwd["cpu_ms_per_echoed_frame"] / nai["cpu_ms_per_echoed_frame"], 3
            )
        if fwd:
            out[f"forward_threads_per_session_{size}"] = fwd["threads_per_session"]
    big = find("forward", "640x480")
    if big:
        out["forward_cpu_pct_per_640x480_stream"] = big["cpu_pct_per_stream"]
        out["forward_cpu_640x480_ok"] = big["cpu_pct_per_stream"] <= TARGETS["forward_cpu_pct_per_640x480_stream"]
    ratios = [v for k, v in out.items() if k.startswith("forward_over_transcode_")]
    if ratios:
        out["forward_over_transcode_ok"] = max(ratios) <= TARGETS["forward_over_transcode"]
    threads = [v for k, v in out.items() if k.startswith("forward_threads_per_session_")]
    if threads:
        out["forward_threads_ok"] = max(threads) <= TARGETS["forward_threads_per_session"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    for width, height in SIZES:
        say(f"encoding the {width}x{height} loop")
        frames = encoded_loop(width, height)
        kbps = sum(len(f) for f in frames) * 8 / (LOOP_FRAMES / FPS) / 1000
        for name in args.servers:
            say(f"{name} {width}x{height}: {args.streams} streams, {args.window:g} s window")
            result = await measure(name, (width, height), frames, args.streams, args.window)
            result["stream_kbps"] = round(kbps)
            say(json.dumps(result))
            results.append(result)
    return {
        "benchmark": "forward",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": args.loadavg},
        "targets": TARGETS,
        "results": results,
        "verdict": verdict(results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU measured per server and size")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--quick", action="store_true", help="2 streams, 3 s windows")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.window = 2, 3.0
    args.loadavg = os.getloadavg()
    restrict_host_addresses([HOST])  # this process's peers: loopback only
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
