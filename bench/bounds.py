"""Every bound pushed at once against one real service process on loopback, with its
default settings (the chart's): RSS, threads and /health latency against the chart's limits.

    PYTHONPATH=. .venv/bin/python bench/bounds.py [--seconds 20]

At the same time, for ``--seconds``: idle connections from four addresses (far over the
per-address cap), half-open requests and slow WHIP bodies, 16 devices that never read a relayed
60 KB of non-ASCII text, a sender relaying to a user with 40 devices, six clients looping offers
of 600 m-sections, and trickled candidates aimed at loopback, link-local and cloud metadata.
Prints one JSON document (progress on stderr); stops by itself; sends only to 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tests.service.test_offer_bounds import sections_offer
from tests.support.media_process import MediaProcess, access_query, auth_header, start_media_service, stop_media_service
from tests.support.non_reader import NonReader
from tests.support.peers import SignalingClient, make_peer, offer_sdp

MEMORY_LIMIT_MIB = 1024  # the chart's resources.limits.memory
READINESS_TIMEOUT_S = 2.0  # the chart's probes.readiness.timeoutSeconds
LIVENESS_TIMEOUT_S = 3.0  # the chart's probes.liveness.timeoutSeconds
REPORTED: list[tuple[str, dict[str, str] | None]] = [
    ("media_connections_refused_total", {"reason": "address"}),
    ("media_connections_refused_total", {"reason": "timeout"}),
    ("media_ws_send_timeouts_total", None),
    ("media_ice_candidates_refused_total", {"reason": "metadata"}),
    ("media_sessions_created_total", None),
]


def proc_status(pid: int) -> tuple[float, int]:
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


async def sample(media: MediaProcess, stop: asyncio.Event, figures: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=media.admin_url, timeout=10) as admin:
        while not stop.is_set():
            rss, threads = proc_status(media.proc.pid)
            started = time.monotonic()
            try:
                ok = (await admin.get("/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            latency = time.monotonic() - started
            figures["rss_mib_max"] = max(figures["rss_mib_max"], rss)
            figures["threads_max"] = max(figures["threads_max"], threads)
            figures["health_seconds"].append(latency)
            figures["health_failures"] += not ok
            await asyncio.sleep(0.2)


async def idle_connections(media: MediaProcess, stop: asyncio.Event, figures: dict[str, Any]) -> None:
    socks: list[socket.socket] = []
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):  # the other loads use 127.0.0.1 and .7
        for _ in range(150):
            with contextlib.suppress(OSError):
                sock = socket.create_connection((media.host, media.port), timeout=2, source_address=(source, 0))
                socks.append(sock)
    figures["idle_connections_attempted"] = len(socks)
    half = [socket.create_connection((media.host, media.port), source_address=("127.0.0.6", 0)) for _ in range(20)]
    for i, sock in enumerate(half):
        sock.send(
            b"GET / HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"POST /whip HTTP/1.1\r\nContent-Length: 9999\r\n\r\nv"
        )
    await stop.wait()
    for sock in socks + half:
        sock.close()


async def slow_readers(media: MediaProcess, stop: asyncio.Event) -> None:
    stuck = [await NonReader.open(media.host, media.port, f"/ws?device=n{i}&{access_query('bob')}") for i in range(16)]
    async with connect(f"{media.ws_url}?device=s", additional_headers=auth_header("carol")) as sender:
        text = "é" * 30_000
        while not stop.is_set():
            message = {"type": "message", "to": "bob", "data": text}
            await sender.send(json.dumps(message, ensure_ascii=False))
            await asyncio.sleep(0.05)
    for n in stuck:
        n.sock.close()


async def fan_out(media: MediaProcess, stop: asyncio.Event, figures: dict[str, Any]) -> None:
    devices = [
        await connect(
            f"{media.ws_url}?device=d{i}",
            additional_headers=auth_header("dave"),
            max_size=None,
            local_addr=("127.0.0.7", 0),
        )
        for i in range(40)
    ]
    received = 0

    async def drain(ws: Any) -> None:
        nonlocal received
        with contextlib.suppress(Exception):
            async for raw in ws:
                received += len(raw)

    readers = [asyncio.create_task(drain(ws)) for ws in devices]
    async with connect(f"{media.ws_url}?device=s", additional_headers=auth_header("erin")) as sender:
        while not stop.is_set():
            await sender.send(json.dumps({"type": "message", "to": "dave", "data": "x" * 20_000}))
            await asyncio.sleep(0.025)
    figures["fan_out_bytes_delivered"] = received
    for ws in devices:
        await ws.close()
    await asyncio.gather(*readers)


async def complex_offers(media: MediaProcess, stop: asyncio.Event, figures: dict[str, Any]) -> None:
    offer = sections_offer(600)
    clients = [await SignalingClient.connect(media.ws_url, user="frank", device=f"o{i}") for i in range(6)]

    async def loop(client: SignalingClient) -> None:
        while not stop.is_set():
            await client.send({"type": "offer", "sdp": offer})
            reply = await client.recv(timeout=30)
            figures["offer_replies"][reply.get("code", reply["type"])] = (
                figures["offer_replies"].get(reply.get("code", reply["type"]), 0) + 1
            )
            await asyncio.sleep(0.05)

    await asyncio.gather(*(loop(c) for c in clients))
    for c in clients:
        await c.close()


async def aimed_candidates(media: MediaProcess, stop: asyncio.Event) -> None:
    client = await SignalingClient.connect(media.ws_url, user="gina")
    peer = make_peer()
    await client.send({"type": "offer", "sdp": (await offer_sdp(peer, trickle=True))[0]})
    session = (await client.recv("answer"))["session"]
    for address in ("127.0.0.9", "169.254.169.254", "fd00:ec2::254", "fe80::1", "10.0.0.1"):
        line = f"candidate:1 1 udp 2130706431 {address} 9 typ host"
        await client.send({"type": "candidate", "session": session, "candidate": {"candidate": line, "sdpMid": "0"}})
    await stop.wait()
    await peer.close()
    await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-bounds-"))
    # The chart's settings, but candidates towards loopback refused as in a real deployment.
    media = await asyncio.to_thread(start_media_service, workdir, env={"MEDIA_ICE_ALLOW_LOOPBACK": "0"})
    idle_rss, idle_threads = proc_status(media.proc.pid)
    figures: dict[str, Any] = {
        "rss_mib_max": idle_rss,
        "threads_max": idle_threads,
        "health_seconds": [],
        "health_failures": 0,
        "offer_replies": {},
    }
    stop = asyncio.Event()
    try:
        sampler = asyncio.create_task(sample(media, stop, figures))
        loads = [
            asyncio.create_task(idle_connections(media, stop, figures)),
            asyncio.create_task(slow_readers(media, stop)),
            asyncio.create_task(fan_out(media, stop, figures)),
            asyncio.create_task(complex_offers(media, stop, figures)),
            asyncio.create_task(aimed_candidates(media, stop)),
        ]
        log(f"all bounds pushed for {args.seconds:g}s")
        await asyncio.sleep(args.seconds)
        stop.set()
        results = await asyncio.gather(*loads, return_exceptions=True)
        await sampler
        metrics = {}
        for name, labels in REPORTED:
            key = name + (json.dumps(labels, sort_keys=True) if labels else "")
            metrics[key] = await asyncio.to_thread(media.metric, name, labels)
    finally:
        await asyncio.to_thread(stop_media_service, media)
    health = sorted(figures.pop("health_seconds"))
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "idle": {"rss_mib": round(idle_rss, 1), "threads": idle_threads},
                "rss_mib_max": round(figures.pop("rss_mib_max"), 1),
                "rss_limit_mib": MEMORY_LIMIT_MIB,
                "threads_max": figures.pop("threads_max"),
                "health_seconds_p50": round(health[len(health) // 2], 4) if health else None,
                "health_seconds_max": round(health[-1], 4) if health else None,
                "readiness_timeout_seconds": READINESS_TIMEOUT_S,
                "liveness_timeout_seconds": LIVENESS_TIMEOUT_S,
                **figures,
                "metrics": metrics,
                "load_errors": [repr(r) for r in results if isinstance(r, BaseException)],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
