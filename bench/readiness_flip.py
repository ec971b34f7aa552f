"""How fast readiness turns false on SIGTERM: the time from the signal to the first 503 from
/ready, polled over a new connection each time (as the kubelet probes), with a live WebRTC session
on the service so that it drains rather than exits. Target: ≤ 100 ms. Prints one JSON document."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media_service.ice import restrict_host_addresses
from tests.support.media_process import MediaProcess, start_media_service
from tests.support.peers import SignalingClient, open_session

TARGET_MS = 100.0


def ready_status(media: MediaProcess) -> int:
    conn = http.client.HTTPConnection(media.host, media.admin_port, timeout=2)
    try:
        conn.request("GET", "/ready")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def one_run(workdir: Path) -> float:
    media = await asyncio.to_thread(start_media_service, workdir, env={"MEDIA_DRAIN_SECONDS": "5"})
    client = await SignalingClient.connect(media.ws_url)
    peer = await open_session(client)
    start = time.monotonic()
    media.signal(signal.SIGTERM)
    deadline = start + 10
    while ready_status(media) != 503:
        if time.monotonic() > deadline:
            raise RuntimeError("readiness did not turn false within 10 s")
    flip_ms = (time.monotonic() - start) * 1000
    await peer.close()
    await client.close()
    await asyncio.to_thread(media.wait, 30)
    return flip_ms


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 runs")
    args = parser.parse_args()
    restrict_host_addresses(["127.0.0.1"])  # this process's peer, like the service, stays on loopback
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        flips = [await one_run(Path(tmp)) for _ in range(runs)]
    result = {
        "benchmark": "readiness_flip",
        "runs": runs,
        "sigterm_to_ready_503_ms": {"median": round(statistics.median(flips), 2), "max": round(max(flips), 2)},
        "target_ms": TARGET_MS,
        "ok": max(flips) <= TARGET_MS,
    }
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
