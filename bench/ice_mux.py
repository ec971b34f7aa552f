"""The shared ICE port against a port per session, side by side, in one run.

Two measurements, each in both modes (``mux``: MEDIA_ICE_UDP_PORT; ``sockets``: aioice's port per
session), CPU always as process CPU time (utime + stime), which other load on the machine does not
inflate the way wall time is:

- ``datagrams``: one receiving process with 50 sessions' worth of aioice ``StunProtocol``s, fed by
  50 client sockets sending SRTP-sized datagrams round-robin as fast as they can, a bounded count.
  ``sockets`` gives each protocol its own asyncio datagram endpoint, as aioice does; ``mux`` puts
  them all behind one ``UdpMux`` (routing by claimed address, delivery in the session's context).
  Figures: datagrams delivered per wall second and per CPU second of the receiver, CPU µs per
  datagram, kernel drops on the receiver's sockets (``/proc/net/udp``).
- ``video``: the real service with 50 concurrent video sessions (160x120, 10 fps by default: a
  load both modes sustain here, so that their figures compare), echoed, the clients in two child
  processes; two runs of each mode, interleaved. Figures over a fixed window: the service's CPU
  per video stream in % of one core and per echoed frame, frames sent and echoed per second and
  session, kernel drops on the service's UDP sockets, and the mux's own drop and receive buffer
  counters.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/ice_mux.py [--quick]``. Prints
one JSON document on stdout, progress on stderr. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"mux_cpu_overhead_pct": 5.0, "mux_drops_at_50_video_sessions": 0}


def say(message: str) -> None:
    print(f"[ice_mux] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def udp_drops(pid: int) -> int:
    """Datagrams the kernel dropped on the process's UDP sockets (the last column of /proc/net/udp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    drops = 0
    for table in ("udp", "udp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                drops += int(fields[-1])
    return drops


# --- datagrams: one receiving process -------------------------------------------------------------


def receiver(mode: str, sessions: int, expected: int) -> None:
    """Child process: bind, print the ports (and wait for the client addresses on stdin), count."""
    import aioice.ice
    from aioice.candidate import Candidate

    from media_service.icemux import IceMux, MuxCounters, UdpMux, joining

    def stun_protocol() -> aioice.ice.StunProtocol:
        protocol = aioice.ice.StunProtocol(Receiver())
        protocol.local_candidate = Candidate("1", 1, "udp", 1, HOST, 1, "host")
        return protocol

    class Receiver:
        count = 0
        first: tuple[float, float] | None = None  # (wall, cpu) at the first datagram
        last = (0.0, 0.0)
        done: asyncio.Event

        def data_received(self, data: bytes, component: int) -> None:
            Receiver.count += 1
            if Receiver.first is None:
                Receiver.first = (time.monotonic(), time.process_time())
            elif Receiver.count % 256 == 0 or Receiver.count >= expected:
                Receiver.last = (time.monotonic(), time.process_time())
            if Receiver.count >= expected:
                Receiver.done.set()

        def request_received(self, *args: Any) -> None:
            pass

        def protocol_lost(self, protocol: Any) -> None:
            pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        Receiver.done = asyncio.Event()
        protocols = []
        mux = None
        if mode == "sockets":
            for _ in range(sessions):
                _, protocol = await loop.create_datagram_endpoint(stun_protocol, local_addr=(HOST, 0))
                protocols.append(protocol)
            ports = [p.transport.get_extra_info("sockname")[1] for p in protocols]
        else:
            udp = UdpMux.bind(HOST, 0, MuxCounters(), receive_buffer=4 << 20)
            mux = IceMux([udp])
            mux.start(loop)
            ports = [udp.sockname[1]] * sessions
        print(json.dumps(ports), flush=True)
        clients = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
        if mux is not None:
            udp = mux.muxes[0]
            with joining(mux):
                for i, client in enumerate(clients):
                    protocol = stun_protocol()
                    transport = udp.join(f"session{i:08d}", protocol, lambda: None)
                    protocol.connection_made(transport)
                    udp.table.claim(transport.route, (client[0], client[1]), confirmed=True)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # the sender has finished
        with contextlib.suppress(TimeoutError):  # the rest still queued, unless the kernel dropped it
            await asyncio.wait_for(Receiver.done.wait(), 3)
        first = Receiver.first or (0.0, 0.0)
        counted = {
            "received": Receiver.count,
            "drops": udp_drops(os.getpid()),
            "wall": Receiver.last[0] - first[0],
            "cpu": Receiver.last[1] - first[1],
        }
        print(json.dumps(counted), flush=True)
        if mux is not None:
            mux.close()

    asyncio.run(main())


def datagrams(mode: str, sessions: int, per_session: int) -> dict[str, Any]:
    total = sessions * per_session
    child = subprocess.Popen(
        [sys.executable, __file__, "--receiver", mode, "--sessions", str(sessions), "--expected", str(total)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ports = json.loads(child.stdout.readline())
        socks = []
        for _ in range(sessions):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            socks.append(sock)
        child.stdin.write(json.dumps([s.getsockname() for s in socks]) + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ready"
        payload = b"\x80\x60" + os.urandom(1198)  # an RTP/SRTP header byte, 1,200 bytes
        for _ in range(per_session):
            for sock, port in zip(socks, ports, strict=True):
                while True:
                    try:
                        sock.sendto(payload, (HOST, port))
                        break
                    except BlockingIOError:  # pragma: no cover - blocking sockets
                        continue
        child.stdin.write("done\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        wall, cpu = result["wall"], result["cpu"]  # first to last datagram, measured by the receiver
        for sock in socks:
            sock.close()
    finally:
        child.wait(timeout=30)
    received = result["received"]
    return {
        "sessions": sessions,
        "sent": total,
        "received": received,
        "kernel_drops": result["drops"],
        "per_wall_second": round(received / wall) if wall else None,
        "per_cpu_second": round(received / cpu) if cpu else None,
        "cpu_us_per_datagram": round(cpu / received * 1e6, 2) if received else None,
        "receiver_cpu_s": round(cpu, 3),
    }


# --- video: the real service ----------------------------------------------------------------------


def video_clients(url: str, count: int, token: str, prefix: str, fps: int) -> None:
    """Child process: ``count`` video sessions; 'ready' once all echo; on stdin EOF, frame counts."""
    import fractions

    from aiortc import RTCSessionDescription

    from media_service.ice import restrict_host_addresses
    from tests.support.peers import ColourBars, Peer, SignalingClient, make_peer, offer_sdp

    restrict_host_addresses([HOST])

    class Paced(ColourBars):
        """ColourBars at ``fps`` frames a second: a load both modes sustain on two shared cores,
        so that their CPU figures compare (a saturated run measures the saturation)."""

        async def next_timestamp(self) -> tuple[int, fractions.Fraction]:
            clock = 90000
            if not hasattr(self, "_began"):
                self._began, self._stamp = time.time(), 0
            else:
                self._stamp += clock // fps
                await asyncio.sleep(max(0.0, self._began + self._stamp / clock - time.time()))
            return self._stamp, fractions.Fraction(1, clock)

    async def open_video(client: SignalingClient) -> Peer:
        peer = make_peer(video=False, data=False)
        peer.video = Paced()
        peer.pc.addTrack(peer.video)
        sdp, _ = await offer_sdp(peer)
        await client.send({"type": "offer", "sdp": sdp})
        answer = await client.recv("answer", timeout=60)
        peer.session = answer["session"]
        await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        await asyncio.wait_for(peer.connected.wait(), 60)
        return peer

    async def main() -> None:
        clients = [
            await SignalingClient.connect(url, user="bench", device=f"{prefix}{i}", token=token) for i in range(count)
        ]
        peers = []
        for i in range(0, count, 5):
            peers += await asyncio.gather(*(open_video(c) for c in clients[i : i + 5]))
        await asyncio.gather(*(p.wait_frames(10, timeout=120) for p in peers))
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)  # start of the window
        start = [(p.video.sent if p.video else 0, p.frames_received) for p in peers]
        began = time.monotonic()
        await loop.run_in_executor(None, sys.stdin.readline)  # end of the window
        seconds = time.monotonic() - began
        sent = sum((p.video.sent if p.video else 0) - s for p, (s, _) in zip(peers, start, strict=True))
        echoed = sum(p.frames_received - r for p, (_, r) in zip(peers, start, strict=True))
        print(json.dumps({"sent_fps": sent / seconds / count, "echoed_fps": echoed / seconds / count}), flush=True)
        for peer in peers:
            await peer.close()
        for client in clients:
            await client.close()

    asyncio.run(main())


def video(mode: str, sessions: int, window: float, workdir: Path, fps: int) -> dict[str, Any]:
    from tests.support.media_process import start_media_service, stop_media_service, token

    port = free_udp_port()
    env = {
        "MEDIA_ICE_UDP_PORT": str(port if mode == "mux" else 0),
        "MEDIA_MAX_SESSIONS_PER_USER": "1000",
        "MEDIA_OFFER_RATE_PER_USER": "1000",
        "MEDIA_SESSION_CONNECT_TIMEOUT": "120",
    }
    media = start_media_service(workdir, env=env)
    children: list[subprocess.Popen[str]] = []
    try:
        per_child = [sessions // 2 + sessions % 2, sessions // 2]
        for index, count in enumerate(per_child):
            children.append(
                subprocess.Popen(
                    [
                        *(sys.executable, __file__, "--video-clients", media.ws_url, "--sessions", str(count)),
                        *("--token", token("bench"), "--prefix", f"c{index}v", "--fps", str(fps)),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"video clients did not get ready: {line!r}")
        pid = media.proc.pid
        drops_before, cpu_before = udp_drops(pid), cpu_seconds(pid)
        mux_before = mux_counters(media)
        load_before = os.getloadavg()
        active = media.metric("media_sessions_active")
        mux_sessions = media.metric("media_ice_mux_sessions")
        for child in children:
            assert child.stdin is not None
            child.stdin.write("start\n")
            child.stdin.flush()
        started = time.monotonic()
        time.sleep(window)  # the measuring window itself, not a synchronisation
        for child in children:
            assert child.stdin is not None
            child.stdin.write("stop\n")
            child.stdin.flush()
        seconds = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        drops = udp_drops(pid) - drops_before
        mux_after = mux_counters(media)
        fps_seen = []
        for child in children:
            assert child.stdout is not None
            fps_seen.append(json.loads(child.stdout.readline()))
    finally:
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
        stop_media_service(media)
    weights = [n for n in per_child if n]
    return {
        "sessions": sessions,
        "sessions_active": active,
        "ice_mux_sessions": mux_sessions,
        "window_s": round(seconds, 1),
        "service_cpu_s": round(cpu, 2),
        "cpu_pct_per_stream": round(cpu / seconds / sessions * 100, 2),
        "cpu_ms_per_echoed_frame": round(
            cpu * 1000 / (sum(f["echoed_fps"] * n for f, n in zip(fps_seen, weights, strict=False)) * seconds), 3
        ),
        "sent_fps_per_session": round(
            sum(f["sent_fps"] * n for f, n in zip(fps_seen, weights, strict=False)) / sessions, 1
        ),
        "echoed_fps_per_session": round(
            sum(f["echoed_fps"] * n for f, n in zip(fps_seen, weights, strict=False)) / sessions, 1
        ),
        "kernel_drops": drops,
        "mux_drops": {k: mux_after[k] - mux_before[k] for k in mux_after},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def mux_counters(media: Any) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counters: dict[str, float] = {}
    text = httpx.get(f"{media.admin_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "media_ice_mux_drops_total":
                counters[sample.labels["reason"]] = sample.value
            elif sample.name == "media_ice_mux_receive_buffer_errors_total":
                counters["receive_buffer_errors"] = sample.value
    return counters


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts and a shorter window")
    parser.add_argument("--only", choices=["datagrams", "video"], help="one measurement")
    parser.add_argument("--receiver", choices=["mux", "sockets"], help=argparse.SUPPRESS)
    parser.add_argument("--video-clients", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--expected", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="v", help=argparse.SUPPRESS)
    parser.add_argument("--fps", type=int, default=10, help="frames a second of each client's video (default 10)")
    args = parser.parse_args(argv)
    if args.receiver:
        receiver(args.receiver, args.sessions, args.expected)
        return 0
    if args.video_clients:
        video_clients(args.video_clients, args.sessions, args.token, args.prefix, args.fps)
        return 0

    per_session = 400 if args.quick else 4000
    window = 5.0 if args.quick else 20.0
    video_sessions = 10 if args.quick else args.sessions
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "targets": TARGETS,
    }
    if args.only in (None, "datagrams"):
        result["datagrams"] = {}
        for mode in ("sockets", "mux", "sockets", "mux"):  # interleaved: drifting load hits both
            say(f"datagrams: {mode}")
            figures = datagrams(mode, 50, per_session)
            result["datagrams"].setdefault(mode, []).append(figures)
    if args.only in (None, "video"):
        result["video"] = {"fps_per_client": args.fps}
        runs: dict[str, list[dict[str, Any]]] = {}
        with tempfile.TemporaryDirectory(prefix="bench-ice-mux-") as tmp:
            for index, mode in enumerate(("sockets", "mux") if args.quick else ("sockets", "mux", "sockets", "mux")):
                say(f"video: {mode}, {video_sessions} sessions at {args.fps} fps")
                workdir = Path(tmp) / f"{mode}-{index}"
                workdir.mkdir()
                runs.setdefault(mode, []).append(video(mode, video_sessions, window, workdir, args.fps))
        result["video"].update(runs)

        def mean(mode: str, key: str) -> float:
            return sum(r[key] for r in runs[mode]) / len(runs[mode])

        result["video"]["mux_cpu_overhead_pct"] = {
            key: round((mean("mux", key) / mean("sockets", key) - 1) * 100, 1)
            for key in ("cpu_pct_per_stream", "cpu_ms_per_echoed_frame")
        }
        result["video"]["mux_drops"] = sum(r["kernel_drops"] + sum(r["mux_drops"].values()) for r in runs["mux"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
