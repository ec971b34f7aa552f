"""Hundreds of sessions in one process: set-up CPU, idle cost, memory under churn; the service
against aiortc's example server (bench/naive_server.py), side by side, one run.

For each server, a fresh real process on 127.0.0.1, driven by real aiortc peers (data channel
only) in this process, as bench/sessions.py does (its servers and peers are reused):

- setup: ``--setup`` (200) sessions opened (offer, answer, ICE, DTLS, SCTP, the channel open) and
  closed, 10 at a time; the server's CPU time for all of it / sessions = ``cpu_ms_per_session``;
- idle: ``--idle`` (500) sessions held open; the server's CPU over ``--window`` (30 s) once they
  are all open, less its rate before the first one: ``cpu_pct_total`` and per session, RSS per
  session; for the service also its leak gauges and, in 10 s after the window, the round trip of
  the protocol's ``ping`` every 100 ms on a WebSocket of its own (p50/p99, ms);
- churn: ``--churn`` (1,000) sessions opened and closed 10 at a time; RSS before, after the first
  half and after all, each read 12 s after the last close (the service trims its heap 10 s after
  sessions close: ``service/media_service/memory.py``); ``growth_second_half_mb`` is what memory
  grows per session once warm.

CPU is process CPU time from /proc (utime+stime), not wall time: the machine's other work slows
the run down without inflating the figures. ``machine.loadavg_*`` says how contended it was.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/idle.py`` (``--quick``: 20 /
50 / 100 sessions, 5 s window). Prints one JSON document on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sessions as base  # bench/sessions.py: its servers, peers and /proc readings

from media_service.ice import restrict_host_addresses
from tests.support.peers import SignalingClient

CONCURRENCY = 10
#: Seconds from the last close to an RSS reading: past the service's heap trim (memory.TRIM_DELAY).
SETTLE_S = 12.0
TARGETS = {
    "idle_cpu_pct_total_at_500": 10.0,
    "idle_cpu_per_session_over_naive": 1.0,
    "ws_ping_p99_ms": 50.0,
    "churn_growth_second_half_mb": 2.0,
    "setup_cpu_ms_per_session": 4.0,
}


def say(message: str) -> None:
    print(f"[idle {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def cpu_seconds_over(pid: int, seconds: float) -> float:
    """The process's CPU seconds per second over ``seconds``."""
    before, start = base.proc_sample(pid).cpu_ticks, time.monotonic()
    await asyncio.sleep(seconds)
    return (base.proc_sample(pid).cpu_ticks - before) / base.CLK_TCK / (time.monotonic() - start)


async def setup_cost(target: base.Target, count: int) -> dict[str, Any]:
    before = base.proc_sample(target.pid).cpu_ticks
    start = time.monotonic()

    async def one(_: int) -> None:
        opened = await target.open()
        await target.close(opened)

    results = await base.bounded(count, CONCURRENCY, one)
    seconds = time.monotonic() - start
    await asyncio.sleep(1.0)  # closes finish on the server
    ticks = base.proc_sample(target.pid).cpu_ticks - before
    done = count - base.errors_of(results)["errors"]
    return {
        "sessions": done,
        "cpu_ms_per_session": round(ticks / base.CLK_TCK / max(done, 1) * 1000, 2),
        "wall_s": round(seconds, 1),
        **base.errors_of(results),
    }


async def ping_rtts(url: str, until: float) -> list[float]:
    """Round trips of the protocol's ``ping`` on one WebSocket, every 100 ms until ``until``."""
    client = await SignalingClient.connect(url, user="pinger", device="p1")
    rtts = []
    try:
        while time.monotonic() < until:
            start = time.perf_counter()
            await client.send({"type": "ping"})
            await client.recv("pong", timeout=10)
            rtts.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.1)
    finally:
        await client.close()
    return rtts


async def idle_cost(target: base.Target, count: int, window: float) -> dict[str, Any]:
    before = await base.settle(target.pid)
    rate_before = await cpu_seconds_over(target.pid, 5.0)
    opened, errors = await base.open_many(target, count, CONCURRENCY)
    try:
        await asyncio.sleep(5.0)  # the last handshakes and first consent checks settle
        held = base.proc_sample(target.pid)
        rate = await cpu_seconds_over(target.pid, window)
        # Then, apart (the reference has no signaling to ping, and pings cost CPU): the protocol's
        # ping, answered while every session is held.
        rtts = await ping_rtts(target.url, time.monotonic() + 10) if isinstance(target, base.ServiceTarget) else []
        stats = await target.stats()
        if isinstance(target, base.ServiceTarget):
            stats.update(await gauges(target))
    finally:
        await base.close_all(target, opened)
    sessions = len(opened)
    out: dict[str, Any] = {
        "sessions": sessions,
        **errors,
        "cpu_pct_before": round(rate_before * 100, 2),
        "cpu_pct_total": round(rate * 100, 2),
        "cpu_pct_per_session": round((rate - rate_before) * 100 / max(sessions, 1), 4),
        "rss_mb_per_session": round((held.rss_kb - before.rss_kb) / 1024 / max(sessions, 1), 3),
        "threads_per_session": round((held.threads - before.threads) / max(sessions, 1), 3),
        "server_stats": stats,
    }
    if rtts:
        out["ws_ping_ms"] = {
            "count": len(rtts),
            "p50": round(base.pct(rtts, 50), 2),
            "p99": round(base.pct(rtts, 99), 2),
            "max": round(max(rtts), 2),
        }
    return out


async def gauges(target: base.ServiceTarget) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"media_potential_goroutine_leak", "media_goroutine_unexplained", "media_goroutine_baseline"}
    text = (await target._stats_http.get("/metrics")).text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in wanted
    }


async def churn(target: base.Target, count: int) -> dict[str, Any]:
    async def open_close(_: int) -> None:
        opened = await target.open()
        await target.close(opened)

    idle = await base.settle(target.pid)
    half = count // 2
    first = await base.bounded(half, CONCURRENCY, open_close)
    middle = await base.settle(target.pid, SETTLE_S)
    second = await base.bounded(count - half, CONCURRENCY, open_close)
    end = await base.settle(target.pid, SETTLE_S)
    return {
        "sessions": count,
        "errors": base.errors_of(first)["errors"] + base.errors_of(second)["errors"],
        "rss_mb_idle": base.mb(idle.rss_kb),
        f"rss_mb_after_{half}": base.mb(middle.rss_kb),
        f"rss_mb_after_{count}": base.mb(end.rss_kb),
        "growth_first_half_mb": base.mb(middle.rss_kb - idle.rss_kb),
        "growth_second_half_mb": base.mb(end.rss_kb - middle.rss_kb),
        "threads_idle_end": [idle.threads, end.threads],
        "fds_idle_end": [idle.fds, end.fds],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = base.Plan(warmup=2)
    results: dict[str, Any] = {}
    for kind in args.servers:
        results[kind] = {}
        for phase in args.phases:
            with tempfile.TemporaryDirectory(prefix=f"bench-idle-{kind}-") as workdir:
                async with base.running(kind, Path(workdir)) as target:
                    await base.warm_up(target, plan)
                    say(f"{kind}: {phase}")
                    if phase == "setup":
                        result = await setup_cost(target, args.setup)
                    elif phase == "idle":
                        result = await idle_cost(target, args.idle, args.window)
                    else:
                        result = await churn(target, args.churn)
                    say(f"{kind} {phase}: {json.dumps(result)}")
                    results[kind][phase] = result
    return {
        "benchmark": "idle",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": args.loadavg,
            "loadavg_end": os.getloadavg(),
        },
        "targets": TARGETS,
        "results": results,
        "verdict": verdict(results),
    }


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    service, naive = results.get("service", {}), results.get("naive", {})
    out: dict[str, Any] = {}
    if "idle" in service:
        idle = service["idle"]
        out["idle_cpu_pct_total"] = idle["cpu_pct_total"]
        out["idle_sessions"] = idle["sessions"]
        out["ws_ping_p99_ms"] = idle.get("ws_ping_ms", {}).get("p99")
        out["leak_flag"] = idle["server_stats"].get("media_potential_goroutine_leak")
        if "idle" in naive and naive["idle"]["cpu_pct_per_session"] > 0:
            out["idle_cpu_per_session_over_naive"] = round(
                idle["cpu_pct_per_session"] / naive["idle"]["cpu_pct_per_session"], 2
            )
    if "setup" in service:
        out["setup_cpu_ms_per_session"] = service["setup"]["cpu_ms_per_session"]
        if "setup" in naive:
            out["setup_cpu_ms_per_session_naive"] = naive["setup"]["cpu_ms_per_session"]
    if "churn" in service:
        out["churn_growth_second_half_mb"] = service["churn"]["growth_second_half_mb"]
        if "churn" in naive:
            out["churn_growth_second_half_mb_naive"] = naive["churn"]["growth_second_half_mb"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", type=int, default=200)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--churn", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--servers", nargs="+", choices=("service", "naive"), default=["service", "naive"])
    parser.add_argument("--phases", nargs="+", choices=("setup", "idle", "churn"), default=["setup", "idle", "churn"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.setup, args.idle, args.churn, args.window = 20, 50, 100, 5.0
    args.loadavg = os.getloadavg()
    restrict_host_addresses([base.HOST])  # this process's peers: loopback only
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
