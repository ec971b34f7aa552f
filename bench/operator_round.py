"""Benchmark of media-operator on a fleet of 1,000 pods.

1,000 pod objects in kmock's Kubernetes emulator; their metrics served by one lightweight HTTP
server listening on 1,000 loopback addresses (127.0.1.1 ...), one per pod IP. The real
``media-operator`` command runs against them. Measured:

- round time: ``media_operator_round_duration_seconds`` (scrape all pods + decide), max over rounds;
- CPU: the operator process's user+system time over the run, as % of one core;
- detection latency: from the moment one pod's leak gauge turns 1 to the quarantine patch
  arriving at the API, against the bound ``confirm + interval``.

Defaults are the production settings (interval 15 s, confirmation 120 s): a run takes ~2.5 min.
``--interval 2 --confirm 10`` gives a quick run. Everything stays on 127.0.0.0/8 and stops itself.

    .venv/bin/python bench/operator_round.py [--pods 1000] [--interval 15] [--confirm 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.kube_emulator import Cluster, cluster, eventually
from tests.support.operator_harness import OperatorProcess, start_operator, stop_operator
from tests.support.ports import free_port

# What a media pod exposes (same families and size as the real service's /metrics).
EXPOSITION = """\
# HELP media_goroutine_count asyncio tasks + threads of the process
# TYPE media_goroutine_count gauge
media_goroutine_count {count}.0
# HELP media_goroutine_count_max highest media_goroutine_count seen
# TYPE media_goroutine_count_max gauge
media_goroutine_count_max {count}.0
# HELP media_goroutine_unexplained what load cannot explain: unowned and orphaned tasks plus threads
# TYPE media_goroutine_unexplained gauge
media_goroutine_unexplained {count}.0
# HELP media_goroutine_baseline baseline of media_goroutine_unexplained; -1 until established
# TYPE media_goroutine_baseline gauge
media_goroutine_baseline 40.0
# HELP media_potential_goroutine_leak 1 = leak suspected, 0 = normal
# TYPE media_potential_goroutine_leak gauge
media_potential_goroutine_leak {leak}.0
# HELP media_asyncio_tasks asyncio tasks by owner state
# TYPE media_asyncio_tasks gauge
media_asyncio_tasks{{owner="live"}} 420.0
media_asyncio_tasks{{owner="closing"}} 0.0
media_asyncio_tasks{{owner="orphaned"}} 0.0
media_asyncio_tasks{{owner="unowned"}} {count}.0
# HELP media_threads threads of the process
# TYPE media_threads gauge
media_threads 3.0
# HELP media_sessions_active open WebRTC sessions
# TYPE media_sessions_active gauge
media_sessions_active 35.0
# HELP media_sessions_created_total WebRTC sessions created
# TYPE media_sessions_created_total counter
media_sessions_created_total 1234.0
# HELP media_sessions_closed_total WebRTC sessions closed, by reason
# TYPE media_sessions_closed_total counter
media_sessions_closed_total{{reason="closed"}} 1190.0
media_sessions_closed_total{{reason="shutdown"}} 0.0
media_sessions_closed_total{{reason="timeout"}} 9.0
media_sessions_closed_total{{reason="failed"}} 0.0
# HELP media_ice_candidates_rejected_total remote ICE candidates refused by the per-session cap
# TYPE media_ice_candidates_rejected_total counter
media_ice_candidates_rejected_total 0.0
# HELP media_ws_clients connected WebSocket clients
# TYPE media_ws_clients gauge
media_ws_clients 40.0
# HELP media_ws_send_timeouts_total slow WebSocket clients dropped by the send timeout
# TYPE media_ws_send_timeouts_total counter
media_ws_send_timeouts_total 2.0
# HELP media_draining 1 while draining
# TYPE media_draining gauge
media_draining 0.0
# HELP media_ready 1 while ready to take new sessions
# TYPE media_ready gauge
media_ready 1.0
"""


def pod_ip(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


class FakeFleet:
    """One aiohttp app answering /metrics for every pod IP (the pod is told by the local address)."""

    def __init__(self, pods: int) -> None:
        self.pods = pods
        self.leaky: set[str] = set()
        self.scrapes = 0
        self._runner: web.AppRunner | None = None
        # Pre-rendered: the server must cost less than the operator it measures.
        self._bodies = {
            leak: EXPOSITION.format(leak=int(leak), count=900 if leak else 60).encode() for leak in (False, True)
        }

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        ip = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        return web.Response(
            body=self._bodies[ip in self.leaky], headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def tasks(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"tasks": 900, "groups": [{"coroutine": "app.handlers.forgotten_poll", "owner": "unowned", "count": 840}]}
        )

    async def drain(self, request: web.Request) -> web.Response:
        return web.json_response({"draining": True}, status=202)

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/debug/tasks", self.tasks)
        app.router.add_post("/admin/drain", self.drain)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for index in range(self.pods):
            await web.TCPSite(self._runner, pod_ip(index), port, backlog=64).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def run(pods: int, interval: float, confirm: float) -> dict[str, object]:
    port = free_port("127.0.1.1")
    fleet = FakeFleet(pods)
    await fleet.start(port)
    op: OperatorProcess | None = None
    try:
        async with cluster() as k8s:
            names = [k8s.seed_pod(pod_ip(i), f"media-{i:04d}") for i in range(pods)]
            with tempfile.TemporaryDirectory(prefix="operator-bench-") as tmp:
                env = {
                    "MEDIA_OPERATOR_SCRAPE_INTERVAL": str(interval),
                    "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "3",
                    "MEDIA_OPERATOR_CONFIRM_SECONDS": str(confirm),
                    "MEDIA_OPERATOR_COOLDOWN_SECONDS": "300",
                    "MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "900",
                    "MEDIA_OPERATOR_SCRAPE_CONCURRENCY": "50",
                }
                op = await start_operator(Path(tmp), k8s, port, env, pods=pods)
                await op.rounds(1, pods=pods, timeout=120)
                return await measure(k8s, op, fleet, names, interval, confirm)
    finally:
        if op is not None:
            await stop_operator(op)
        await fleet.stop()


async def measure(
    k8s: Cluster, op: OperatorProcess, fleet: FakeFleet, names: list[str], interval: float, confirm: float
) -> dict[str, object]:
    victim = len(names) // 3
    rounds: list[float] = []

    async def sample_rounds() -> None:
        while True:  # one reading per interval: polling faster would load the process measured
            value = await op.metric("media_operator_round_duration_seconds")
            if value and (not rounds or rounds[-1] != value):
                rounds.append(value)
            await asyncio.sleep(interval)

    def quarantined() -> bool:  # in-process read of the emulator's store: costs the operator nothing
        pod = k8s.pod(names[victim]) or {}
        return pod.get("metadata", {}).get("labels", {}).get("media-service/pool") == "quarantined"

    sampler = asyncio.create_task(sample_rounds())
    cpu0, wall0 = cpu_seconds(op.proc.pid), time.monotonic()
    fleet.leaky.add(pod_ip(victim))
    turned_on = time.monotonic()
    try:
        await eventually(quarantined, timeout=confirm + 3 * interval + 60, what="quarantine", interval=0.05)
    finally:
        sampler.cancel()
    latency = time.monotonic() - turned_on
    cpu1, wall1 = cpu_seconds(op.proc.pid), time.monotonic()
    return {
        "pods": len(names),
        "interval_s": interval,
        "confirm_s": confirm,
        "round_s_max": round(max(rounds), 3),
        "round_s_samples": [round(r, 3) for r in rounds],
        "operator_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 2),
        "measured_over_s": round(wall1 - wall0, 1),
        "detection_latency_s": round(latency, 2),
        "detection_bound_s": confirm + interval,
        "quarantined_others": sum(1 for n in names if n != names[victim] and k8s.patches(n)),
        "pod_scrapes_served": fleet.scrapes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--confirm", type=float, default=120.0)
    args = parser.parse_args()
    if not 1 <= args.pods <= 2000:
        parser.error("--pods must be within 1..2000 (one loopback address each)")
    result = asyncio.run(run(args.pods, args.interval, args.confirm))
    print(json.dumps(result, indent=2))
    ok = (
        result["round_s_max"] <= 5
        and result["operator_cpu_percent_of_one_core"] < 20
        and result["detection_latency_s"] <= result["detection_bound_s"]
        and result["quarantined_others"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
