"""Messages across replicas through one Redis.

Three real replicas (127.0.0.2-4) share one real redis-server; 300 users have three devices each,
one on every replica (900 WebSocket clients). The benchmark reports:

- delivery latency, sender's send to receiver's read, for the device on the sender's own replica
  (same-replica) and for the two on the others (cross-replica), in the same run, at a steady rate;
- whether anything was lost or reordered while Redis was up;
- messages per second through one Redis with every sender sending as fast as it can, and each
  replica's CPU per message it handled (published or delivered);
- the time from Redis coming back (restarted, empty) to ``media_bus_up 1`` on every replica.

Target: cross-replica p99 at most 2 x same-replica p99 + 5 ms, nothing lost while Redis is up.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/bus.py [--users 300]``.
Loopback only, bounded: about a minute on 2 cores, where the 900 clients share the cores with the
servers they measure. Prints one JSON document; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from tests.support.media_process import MediaProcess, access_query, start_media_service, stop_media_service
from tests.support.redis_server import RedisServer, redis_server

REPLICAS = 3


def progress(text: str) -> None:
    print(f"[bus] {text}", file=sys.stderr, flush=True)


def metric(media: MediaProcess, name: str, labels: dict[str, str] | None = None) -> float:
    text = httpx.get(f"{media.admin_url}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Device:
    user: int
    replica: int
    ws: ClientConnection
    # sender replica -> seqs, to check order per sender; latencies by class.
    seqs: dict[tuple[int, int], list[int]] = field(default_factory=lambda: defaultdict(list))
    received: int = 0


@dataclass
class Stats:
    same: list[float] = field(default_factory=list)
    cross: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def read(device: Device, stats: Stats, measuring: list[bool]) -> None:
    async for raw in device.ws:
        now = time.time()
        message = json.loads(raw)
        if message.get("type") == "error":
            stats.errors.append(message["code"])
            continue
        if message.get("type") != "message":
            continue
        data = message["data"]
        device.received += 1
        device.seqs[(data["u"], data["r"])].append(data["n"])
        if measuring[0]:
            (stats.same if data["r"] == device.replica else stats.cross).append((now - data["t"]) * 1000)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def steady(devices: list[list[Device]], users: int, rate: float, seconds: float, first: int = 0) -> int:
    """Each user in turn sends one message to the next user, from the device on replica u % 3."""
    sent, interval, start = 0, 1 / rate, time.monotonic()
    while time.monotonic() - start < seconds:
        u = sent % users
        sender = devices[u][u % REPLICAS]
        body = {"u": u, "r": sender.replica, "n": first + sent // users, "t": time.time()}
        await sender.ws.send(json.dumps({"type": "message", "to": f"u{(u + 1) % users}", "data": body}))
        sent += 1
        delay = start + sent * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent


async def burst(devices: list[list[Device]], users: int, seconds: float, window: int) -> int:
    """Every user's first device sends as fast as the whole path delivers: at most ``window``
    messages in flight at once, so the measuring clients (one process) are never the slow readers."""
    stop = time.monotonic() + seconds
    counts = [0] * users
    base = sum(d.received for row in devices for d in row)

    def in_flight() -> int:
        return sum(counts) - (sum(d.received for row in devices for d in row) - base) // REPLICAS

    async def send(u: int) -> None:
        sender = devices[u][0]
        while time.monotonic() < stop:
            while in_flight() > window:
                await asyncio.sleep(0.002)
            body = {"u": u, "r": sender.replica, "n": 10_000_000 + counts[u], "t": time.time()}
            await sender.ws.send(json.dumps({"type": "message", "to": f"u{(u + 1) % users}", "data": body}))
            counts[u] += 1

    await asyncio.gather(*(send(u) for u in range(users)))
    return sum(counts)


async def recovery(redis: RedisServer, replicas: list[MediaProcess]) -> dict[str, float]:
    redis.kill()
    await until(lambda: all(metric(m, "media_bus_up") == 0 for m in replicas), 30, "the bus to go down")
    redis.start()
    back = time.monotonic()
    times: dict[str, float] = {}
    while len(times) < len(replicas) and time.monotonic() - back < 30:
        for media in replicas:
            if media.host not in times and await asyncio.to_thread(metric, media, "media_bus_up") == 1:
                times[media.host] = round(time.monotonic() - back, 3)
        await asyncio.sleep(0.01)
    return times


async def run(users: int, rate: float, seconds: float) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-bus-"))
    redis = redis_server(workdir)
    replicas: list[MediaProcess] = []
    stats, measuring = Stats(), [False]
    devices: list[list[Device]] = []
    readers: list[asyncio.Task[None]] = []
    try:
        env = {
            "MEDIA_REDIS_URL": redis.url,
            "MEDIA_WS_RATE_LIMIT": "100000",
            "MEDIA_WS_RELAY_RATE_BYTES": str(1 << 40),
            "MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "100000",  # every client comes from one address
            "MEDIA_LOG_LEVEL": "warning",
        }
        replicas = [
            await asyncio.to_thread(start_media_service, workdir, host=f"127.0.0.{i + 2}", env=env)
            for i in range(REPLICAS)
        ]
        progress(f"{len(replicas)} replicas up; connecting {users * REPLICAS} clients")
        for u in range(users):
            row = []
            for r, media in enumerate(replicas):
                url = f"{media.ws_url}?device=d{r}&{access_query(f'u{u}')}"
                ws = await connect(url, max_size=None, open_timeout=30)
                row.append(Device(u, r, ws))
            devices.append(row)
        readers = [asyncio.create_task(read(d, stats, measuring)) for row in devices for d in row]
        for media in replicas:
            await until(lambda m=media: metric(m, "media_bus_subscriptions") == users, 60, "subscriptions")

        progress(f"steady: {rate:g} messages/s for {seconds:g} s")
        await steady(devices, users, rate / 10, 2)  # warm-up, not measured
        await asyncio.sleep(1)
        measuring[0] = True
        sent = await steady(devices, users, rate, seconds, first=1_000_000)
        await asyncio.sleep(2)
        measuring[0] = False
        delivered = len(stats.same) + len(stats.cross)

        progress("burst: every sender as fast as the path delivers, 5 s")
        before = {m.host: (cpu_seconds(m.proc.pid), metric(m, "media_bus_messages_total")) for m in replicas}
        published_before = sum(metric(m, "media_bus_messages_total", {"direction": "out"}) for m in replicas)
        assert redis.proc is not None
        redis_cpu_before = cpu_seconds(redis.proc.pid)
        started = time.monotonic()
        burst_sent = await burst(devices, users, 5, window=users)
        await until(
            lambda: all(len(d.seqs[(u, 0)]) > 0 for u in range(users) for d in devices[(u + 1) % users]),
            60,
            "the burst to be delivered",
        )
        elapsed = time.monotonic() - started
        published = sum(metric(m, "media_bus_messages_total", {"direction": "out"}) for m in replicas)
        redis_cpu = (cpu_seconds(redis.proc.pid) - redis_cpu_before) / elapsed
        cpu_per_message = {
            m.host: round(
                (cpu_seconds(m.proc.pid) - before[m.host][0])
                / max(1.0, metric(m, "media_bus_messages_total") - before[m.host][1])
                * 1e6,
                1,
            )
            for m in replicas
        }

        order_ok = all(
            seqs == sorted(seqs) and len(seqs) == len(set(seqs))
            for row in devices
            for d in row
            for seqs in d.seqs.values()
        )
        progress("recovery: Redis killed, restarted empty")
        back = await recovery(redis, replicas)
        same_p99, cross_p99 = percentile(stats.same, 0.99), percentile(stats.cross, 0.99)
        result: dict[str, object] = {
            "replicas": REPLICAS,
            "users": users,
            "clients": users * REPLICAS,
            "steady": {
                "rate_per_s": rate,
                "seconds": seconds,
                "sent": sent,
                "expected_deliveries": 3 * sent,
                "delivered": delivered,
                "same_replica_ms": {
                    "p50": round(statistics.median(stats.same), 2),
                    "p99": round(same_p99, 2),
                },
                "cross_replica_ms": {
                    "p50": round(statistics.median(stats.cross), 2),
                    "p99": round(cross_p99, 2),
                },
            },
            "burst": {
                "sent": burst_sent,
                "published_per_s_through_redis": round((published - published_before) / elapsed),
                "deliveries_per_s": round(3 * burst_sent / elapsed),
                "replica_cpu_us_per_message": cpu_per_message,
                "redis_cpu_share_of_a_core": round(redis_cpu, 3),
            },
            "in_order_no_duplicates": order_ok,
            "errors": sorted(set(stats.errors)),
            "redis_back_to_bus_up_s": back,
            "machine": {"loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count()},
        }
        result["target_met"] = bool(
            cross_p99 <= 2 * same_p99 + 5 and delivered == 3 * sent and order_ok and not stats.errors
        )
        return result
    finally:
        for task in readers:
            task.cancel()
        for row in devices:
            for d in row:
                await d.ws.close()
        for media in replicas:
            await asyncio.to_thread(stop_media_service, media)
        redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rate", type=float, default=300, help="messages per second in the steady phase")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.users, args.rate, args.seconds))
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
