"""The reference the benchmarks compare against: the common aiortc server pattern.

This is what most aiortc services start from (aiortc's own examples/server): a module-level set of
peer connections, one ``POST /offer`` that answers with JSON, media echoed back, and cleanup only
when a connection reaches ``failed``. It is kept deliberately naive; do not fix it, it is the
baseline. Two departures, both so that it can be measured here at all:

- an explicit, empty ICE server list: with none given aiortc falls back to a public STUN server,
  which would send traffic off the loopback and stall every session where there is no egress;
- host candidates on loopback only (``--ice-host``), as for every benchmark peer.

``GET /stats`` reports ``len(pcs)`` so the benchmark can show what the set retains.

Run: ``.venv/bin/python bench/naive_server.py --host 127.0.0.1 --port 8081`` (bench/sessions.py starts it).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from media_service.ice import restrict_host_addresses

pcs: set[RTCPeerConnection] = set()


async def offer(request: web.Request) -> web.Response:
    params = await request.json()
    remote = RTCSessionDescription(sdp=params["sdp"], type=params["type"])

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pcs.add(pc)

    @pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        @channel.on("message")
        def on_message(message: Any) -> None:
            channel.send(message)

    @pc.on("track")
    def on_track(track: Any) -> None:
        pc.addTrack(track)

    @pc.on("connectionstatechange")
    async def on_connectionstatechange() -> None:
        if pc.connectionState == "failed":
            await pc.close()
            pcs.discard(pc)

    await pc.setRemoteDescription(remote)
    await pc.setLocalDescription(await pc.createAnswer())
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})


async def stats(request: web.Request) -> web.Response:
    states: dict[str, int] = {}
    for pc in pcs:
        states[pc.connectionState] = states.get(pc.connectionState, 0) + 1
    return web.json_response({"pcs": len(pcs), "states": states})


async def on_shutdown(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs))
    pcs.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description="naive aiortc echo server (benchmark reference)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--ice-host",
        action="append",
        default=None,
        help="address offered as ICE host candidate (repeatable; default 127.0.0.1)",
    )
    args = parser.parse_args()
    restrict_host_addresses(args.ice_host or ["127.0.0.1"])
    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/offer", offer)
    app.router.add_get("/stats", stats)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
