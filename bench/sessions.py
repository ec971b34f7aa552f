"""Session benchmarks: the media service against the naive aiortc server, side by side, one run.

Every figure comes from real processes on loopback: the service as users run it
(``python -m media_service``, started by tests/support/media_process.py) and bench/naive_server.py,
driven by real aiortc peers (tests/support/peers.py) in this process. Server-side resources are
read from /proc/<pid> of the server process. Each phase starts a fresh server process, warms it up
with a few sessions, then measures:

- latency: data-channel sessions at a fixed concurrency; offer→answer and offer→connected;
- residue: sessions opened and closed; threads, fds and RSS idle / peak / 5 s after the last close;
- vanish: a client process with open sessions is killed; what the server still holds 5 s later;
- idle_rss: RSS per idle data-channel session with sessions held open;
- video_cpu: % of one core the server spends per echoed 160x120 video session;
- metrics_scrape (service only): GET /metrics time at growing numbers of open sessions.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/sessions.py`` (``--quick`` for
a smoke run, ``--only service`` or ``--phase latency`` to narrow it). Prints one JSON document on
stdout; progress goes to stderr. Bounded in count and time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiortc
import httpx
from aiortc import RTCSessionDescription

from media_service.ice import restrict_host_addresses
from tests.support.media_process import start_media_service, stop_media_service
from tests.support.peers import Peer, SignalingClient, make_peer, offer_sdp
from tests.support.ports import free_port

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
CONNECT_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "offer_answer_p50_ms": 60,
    "offer_connected_p90_ms": 150,
    "offer_connected_max_ms": 1000,
    "residue_back_to_idle_s": 5,
    "residue_rss_growth_mb": 5,
    "rss_per_idle_session_mb": 0.5,
    "cpu_per_video_session_pct": 3,
    "metrics_scrape_ms_at_500": 20,
}


@dataclass(frozen=True)
class Plan:
    """Counts and windows; fixed, so runs compare."""

    warmup: int = 2
    latency_sessions: int = 40
    latency_concurrency: int = 10
    residue_sessions: int = 200
    residue_concurrency: int = 10
    residue_window_s: float = 5.0
    vanish_sessions: int = 50
    idle_sessions: int = 100
    video_sessions: int = 4
    video_window_s: float = 10.0
    metrics_steps: tuple[int, ...] = (0, 100, 250, 500)
    metrics_target_sessions: int = 500
    metrics_scrapes: int = 40
    open_concurrency: int = 10


FULL = Plan()
QUICK = Plan(
    warmup=1,
    latency_sessions=10,
    latency_concurrency=5,
    residue_sessions=20,
    residue_concurrency=5,
    residue_window_s=2.0,
    vanish_sessions=10,
    idle_sessions=10,
    video_sessions=1,
    video_window_s=2.0,
    metrics_steps=(0, 10),
    metrics_scrapes=10,
)


def say(message: str) -> None:
    print(f"[sessions {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- /proc readings


@dataclass(frozen=True)
class ProcSample:
    threads: int
    fds: int
    rss_kb: int
    cpu_ticks: int


def proc_sample(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()  # fields from 3 (state) on
    utime, stime = int(after_name[11]), int(after_name[12])
    return ProcSample(
        threads=int(fields["Threads"].strip()),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_kb=int(fields["VmRSS"].split()[0]),
        cpu_ticks=utime + stime,
    )


class PeakSampler:
    """Samples a process every ``interval`` seconds in a thread, keeping the maxima."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = proc_sample(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                s = proc_sample(self.pid)
                p = self.peak
                self.peak = ProcSample(
                    max(p.threads, s.threads), max(p.fds, s.fds), max(p.rss_kb, s.rss_kb), s.cpu_ticks
                )

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- the two servers


@dataclass
class Opened:
    peer: Peer
    offer_answer_s: float
    offer_connected_s: float
    handle: Any = None


class Target:
    """A server under test: how to open and close a session, and which process to read."""

    name: str
    pid: int
    url: str  # where sessions are opened: the service's /ws, the naive server's base URL

    async def open(self, *, video: bool = False, data: bool = True) -> Opened:
        raise NotImplementedError

    async def close(self, opened: Opened) -> None:
        raise NotImplementedError

    async def stats(self) -> dict[str, Any]:
        return {}

    async def aclose(self) -> None:
        return None


class ServiceTarget(Target):
    name = "service"

    def __init__(self, url: str, admin_url: str, pid: int) -> None:
        self.url, self.admin_url, self.pid = url, admin_url, pid
        self._next = 0
        # Scrapes reuse one connection, as Prometheus does; stats use a connection each, so
        # that no idle keep-alive socket of ours is counted as the server's residue.
        self._http = httpx.AsyncClient(base_url=admin_url, timeout=10)
        self._stats_http = httpx.AsyncClient(
            base_url=admin_url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def open(self, *, video: bool = False, data: bool = True) -> Opened:
        self._next += 1
        client = await SignalingClient.connect(self.url, user=f"bench{self._next}", device="d1")
        peer = make_peer(video=video, data=data)
        try:
            sdp, _ = await offer_sdp(peer)
            start = time.perf_counter()
            await client.send({"type": "offer", "sdp": sdp})
            answer = await client.recv(None, timeout=CONNECT_TIMEOUT)
            answered = time.perf_counter()
            if answer.get("type") != "answer":
                raise RuntimeError(f"service refused the offer: {answer}")
            peer.session = answer["session"]
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
            await asyncio.wait_for(peer.connected.wait(), CONNECT_TIMEOUT)
            connected = time.perf_counter()
            if data:
                await asyncio.wait_for(peer.channel_open.wait(), CONNECT_TIMEOUT)
        except BaseException:
            await peer.close()
            await client.close()
            raise
        return Opened(peer, answered - start, connected - start, client)

    async def close(self, opened: Opened) -> None:
        client: SignalingClient = opened.handle
        with contextlib.suppress(Exception):
            await client.send({"type": "bye", "session": opened.peer.session})
            await client.recv("bye", timeout=5, session=opened.peer.session)
        await opened.peer.close()
        await client.close()

    async def stats(self) -> dict[str, Any]:
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self._stats_http.get("/metrics")).text
        wanted = {"media_sessions_active", "media_threads", "media_asyncio_tasks", "media_ws_clients"}
        out: dict[str, Any] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in wanted:
                    key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sample.labels.items())
                    out[key] = sample.value
        out["debug_tasks_live"] = await self.task_count()
        return out

    async def task_count(self) -> int | None:
        """Live asyncio tasks from /debug/tasks (the leak gauges lag by up to one sample interval)."""
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            return int((await self._stats_http.get("/debug/tasks")).json()["tasks"])
        return None

    async def scrape_ms(self) -> float:
        start = time.perf_counter()
        response = await self._http.get("/metrics")
        elapsed = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        return elapsed

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._stats_http.aclose()


class NaiveTarget(Target):
    name = "naive"

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        # A connection per request: idle keep-alive sockets would count as the server's residue.
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT), connector=aiohttp.TCPConnector(force_close=True)
        )

    async def open(self, *, video: bool = False, data: bool = True) -> Opened:
        peer = make_peer(video=video, data=data)
        sdp, _ = await offer_sdp(peer)
        try:
            start = time.perf_counter()
            async with self._http.post(f"{self.url}/offer", json={"sdp": sdp, "type": "offer"}) as response:
                response.raise_for_status()
                answer = await response.json()
            answered = time.perf_counter()
            await peer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            await asyncio.wait_for(peer.connected.wait(), CONNECT_TIMEOUT)
            connected = time.perf_counter()
            if data:
                await asyncio.wait_for(peer.channel_open.wait(), CONNECT_TIMEOUT)
        except BaseException:
            await peer.close()
            raise
        return Opened(peer, answered - start, connected - start)

    async def close(self, opened: Opened) -> None:
        await opened.peer.close()  # the pattern has no other way to end a session

    async def stats(self) -> dict[str, Any]:
        async with self._http.get(f"{self.url}/stats") as response:
            return await response.json()

    async def aclose(self) -> None:
        await self._http.close()


@contextlib.asynccontextmanager
async def running_service(workdir: Path) -> AsyncIterator[Target]:
    # One WebSocket per session, all from one address: more than MEDIA_MAX_CONNECTIONS_PER_ADDRESS.
    env = {"MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "100000"}
    media = await asyncio.to_thread(start_media_service, workdir, host=HOST, env=env)
    target = ServiceTarget(media.ws_url, media.admin_url, media.proc.pid)
    try:
        yield target
    finally:
        await target.aclose()
        await asyncio.to_thread(stop_media_service, media, 15.0)


@contextlib.asynccontextmanager
async def running_naive(workdir: Path) -> AsyncIterator[Target]:
    port = free_port(HOST)
    with (workdir / f"naive-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "naive_server.py"), "--host", HOST, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    target = NaiveTarget(f"http://{HOST}:{port}", proc.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"naive server exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await target.stats()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("naive server not answering within 30 s")
            await asyncio.sleep(0.05)
        yield target
    finally:
        await target.aclose()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


def running(kind: str, workdir: Path) -> contextlib.AbstractAsyncContextManager[Target]:
    """A fresh server process of ``kind``; phases close their sessions before it is stopped."""
    return running_service(workdir) if kind == "service" else running_naive(workdir)


# ----------------------------------------------------------------------------- helpers


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def bounded(count: int, concurrency: int, job: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Run job(0..count-1) with at most ``concurrency`` at once; exceptions are returned, not raised."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with semaphore:
            try:
                return await job(i)
            except Exception as exc:  # a failed session is a figure, not a crash
                return exc

    return await asyncio.gather(*(one(i) for i in range(count)))


def errors_of(results: list[Any]) -> dict[str, Any]:
    failures = [r for r in results if isinstance(r, BaseException)]
    return {"errors": len(failures), "first_error": repr(failures[0])[:300] if failures else None}


async def open_many(target: Target, count: int, concurrency: int) -> tuple[list[Opened], dict[str, Any]]:
    results = await bounded(count, concurrency, lambda i: target.open())
    return [r for r in results if isinstance(r, Opened)], errors_of(results)


async def close_all(target: Target, sessions: list[Opened], concurrency: int = 20) -> None:
    await bounded(len(sessions), concurrency, lambda i: target.close(sessions[i]))


async def warm_up(target: Target, plan: Plan) -> None:
    """First sessions pay one-off costs (lazy imports, SSL contexts); keep them out of the figures."""
    for _ in range(plan.warmup):
        opened = await target.open()
        await opened.peer.echo("warm-up")
        await target.close(opened)
    await asyncio.sleep(1.0)


async def settle(pid: int, seconds: float = 1.0) -> ProcSample:
    await asyncio.sleep(seconds)
    return proc_sample(pid)


def mb(kb: float) -> float:
    return round(kb / 1024, 2)


# ----------------------------------------------------------------------------- phases


async def latency(target: Target, plan: Plan) -> dict[str, Any]:
    async def session(i: int) -> Opened:
        opened = await target.open()
        try:
            if await opened.peer.echo(f"ping {i}") != f"ping {i}":
                raise RuntimeError("data channel echo mismatch")
        finally:
            await target.close(opened)
        return opened

    results = await bounded(plan.latency_sessions, plan.latency_concurrency, session)
    ok = [r for r in results if isinstance(r, Opened)]
    out: dict[str, Any] = {
        "sessions": plan.latency_sessions,
        "concurrency": plan.latency_concurrency,
        **errors_of(results),
    }
    if ok:
        answer = [o.offer_answer_s for o in ok]
        connected = [o.offer_connected_s for o in ok]
        out.update(
            {
                "offer_answer_ms": {"p50": ms(pct(answer, 50)), "p90": ms(pct(answer, 90)), "max": ms(max(answer))},
                "offer_connected_ms": {
                    "p50": ms(pct(connected, 50)),
                    "p90": ms(pct(connected, 90)),
                    "max": ms(max(connected)),
                },
                "over_1s": sum(1 for c in connected if c > 1.0),
            }
        )
    return out


def fd_targets(pid: int) -> dict[str, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return out


def fd_kinds(targets: list[str]) -> dict[str, int]:
    """'socket:[123]' -> 'socket', '/dev/null' -> 'file'; counted."""
    kinds: dict[str, int] = {}
    for target in targets:
        kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def residue(target: Target, plan: Plan) -> dict[str, Any]:
    stats_idle = await target.stats()
    idle = await settle(target.pid)
    idle_fds = fd_targets(target.pid)

    async def session(i: int) -> None:
        opened = await target.open()
        await target.close(opened)

    half = plan.residue_sessions // 2
    with PeakSampler(target.pid) as sampler:
        started = time.perf_counter()
        # Two halves, so RSS growth can be told apart: allocator high-water (first half only)
        # versus memory kept per closed session (both halves).
        results = await bounded(half, plan.residue_concurrency, session)
        midway = proc_sample(target.pid)
        results += await bounded(plan.residue_sessions - half, plan.residue_concurrency, session)
        churn_s = time.perf_counter() - started
        back, after = await watch_back_to_idle(target.pid, idle, plan.residue_window_s)
        peak = sampler.peak
    extra = [t for fd, t in fd_targets(target.pid).items() if idle_fds.get(fd) != t]
    return {
        "sessions": plan.residue_sessions,
        "concurrency": plan.residue_concurrency,
        "churn_seconds": round(churn_s, 1),
        **errors_of(results),
        "threads": {"idle": idle.threads, "peak": peak.threads, "after_5s": after.threads},
        "fds": {"idle": idle.fds, "peak": peak.fds, "after_5s": after.fds, "extra_after_5s": fd_kinds(extra)},
        "rss_mb": {
            "idle": mb(idle.rss_kb),
            "peak": mb(peak.rss_kb),
            "midway": mb(midway.rss_kb),
            "after_5s": mb(after.rss_kb),
        },
        "rss_growth_mb": mb(after.rss_kb - idle.rss_kb),
        "rss_growth_second_half_mb": mb(after.rss_kb - midway.rss_kb),
        "seconds_to_idle": back,  # None: not back to the idle count within the window
        "server_stats": {"idle": stats_idle, "after_5s": await target.stats()},
    }


async def watch_back_to_idle(pid: int, idle: ProcSample, window_s: float) -> tuple[dict[str, float | None], ProcSample]:
    """Sample the process for ``window_s``: seconds until its threads and fds were back to the idle
    counts (None: not within the window), and the last sample."""
    start = time.monotonic()
    back: dict[str, float | None] = {"threads": None, "fds": None}
    while True:
        now = time.monotonic() - start
        sample = proc_sample(pid)
        for key in back:
            if back[key] is None and getattr(sample, key) <= getattr(idle, key):
                back[key] = round(now, 2)
        if now >= window_s:
            return back, sample
        await asyncio.sleep(0.1)


async def vanish(target: Target, plan: Plan) -> dict[str, Any]:
    """Clients that disappear without a goodbye: a client process with open sessions is killed
    (SIGKILL: no bye, no DTLS close_notify, its TCP connections reset by the kernel). Then the
    server's threads, fds and sessions are watched for the residue window."""
    stats_idle = await target.stats()
    idle = await settle(target.pid)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR.parent), os.environ.get("PYTHONPATH")])),
    }
    child = subprocess.Popen(
        [sys.executable, __file__, "--vanishing-client", target.name, target.url, str(plan.vanish_sessions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 90)  # type: ignore[union-attr]
        opened = json.loads(line)
        held = proc_sample(target.pid)
        stats_held = await target.stats()
    finally:
        child.kill()  # the client vanishes
        await asyncio.to_thread(child.wait)
    back, s = await watch_back_to_idle(target.pid, idle, plan.residue_window_s)
    return {
        "sessions": plan.vanish_sessions,
        "client": opened,
        "threads": {"idle": idle.threads, "held": held.threads, "after_5s": s.threads},
        "fds": {"idle": idle.fds, "held": held.fds, "after_5s": s.fds},
        "seconds_to_idle": back,
        "server_stats": {"idle": stats_idle, "held": stats_held, "after_5s": await target.stats()},
    }


async def vanishing_client(kind: str, url: str, count: int) -> None:
    """The child process of ``vanish``: open sessions, say so on stdout, wait to be killed."""
    restrict_host_addresses([HOST])
    target: Target = (
        ServiceTarget(url, url.replace("ws://", "http://"), 0) if kind == "service" else NaiveTarget(url, 0)
    )
    results = await bounded(count, 10, lambda i: target.open())
    print(json.dumps({"opened": sum(isinstance(r, Opened) for r in results), **errors_of(results)}), flush=True)
    await asyncio.sleep(120)  # bounded: killed long before this


async def idle_rss(target: Target, plan: Plan) -> dict[str, Any]:
    before = await settle(target.pid)
    sessions, errors = await open_many(target, plan.idle_sessions, plan.open_concurrency)
    held = await settle(target.pid, 2.0)
    out = {
        "sessions_held": len(sessions),
        **errors,
        "rss_mb": {"before": mb(before.rss_kb), "held": mb(held.rss_kb)},
        "rss_per_session_mb": round((held.rss_kb - before.rss_kb) / 1024 / max(1, len(sessions)), 3),
        "fds_per_session": round((held.fds - before.fds) / max(1, len(sessions)), 2),
        "threads": {"before": before.threads, "held": held.threads},
    }
    await close_all(target, sessions)
    return out


async def video_cpu(target: Target, plan: Plan) -> dict[str, Any]:
    idle_window = min(3.0, plan.video_window_s)
    a = proc_sample(target.pid)
    await asyncio.sleep(idle_window)
    b = proc_sample(target.pid)
    idle_pct = (b.cpu_ticks - a.cpu_ticks) / CLK_TCK / idle_window * 100

    sessions: list[Opened] = []
    results = await bounded(plan.video_sessions, plan.video_sessions, lambda i: target.open(video=True, data=False))
    sessions = [r for r in results if isinstance(r, Opened)]
    out: dict[str, Any] = {"sessions": len(sessions), **errors_of(results), "window_s": plan.video_window_s}
    try:
        if sessions:
            # Wait until every echo is flowing, then measure a steady window.
            await asyncio.gather(*(o.peer.wait_frames(10, timeout=20) for o in sessions))
            frames0 = [o.peer.frames_received for o in sessions]
            sent0 = [o.peer.video.sent for o in sessions if o.peer.video]
            me = os.getpid()
            c0, m0, t0 = proc_sample(target.pid), proc_sample(me), time.perf_counter()
            await asyncio.sleep(plan.video_window_s)
            c1, m1, t1 = proc_sample(target.pid), proc_sample(me), time.perf_counter()
            window = t1 - t0
            total_pct = (c1.cpu_ticks - c0.cpu_ticks) / CLK_TCK / window * 100
            received = [o.peer.frames_received - f for o, f in zip(sessions, frames0, strict=False)]
            sent = [o.peer.video.sent - s for o, s in zip(sessions, sent0, strict=False) if o.peer.video]
            out.update(
                {
                    "server_cpu_pct_idle": round(idle_pct, 2),
                    "server_cpu_pct_total": round(total_pct, 2),
                    "cpu_pct_per_session": round((total_pct - idle_pct) / len(sessions), 2),
                    "sent_fps_per_session": round(sum(sent) / len(sent) / window, 1) if sent else None,
                    "echoed_fps_per_session": round(sum(received) / len(received) / window, 1),
                    "server_threads": c1.threads,
                    # The client peers encode and decode too, on the same cores: contention to keep in mind.
                    "client_cpu_pct_total": round((m1.cpu_ticks - m0.cpu_ticks) / CLK_TCK / window * 100, 2),
                }
            )
    finally:
        await close_all(target, sessions)
    # Decoder and encoder threads are per track: they should end with their sessions.
    closed_at, threads_back = time.monotonic(), None
    while time.monotonic() - closed_at < plan.residue_window_s:
        if proc_sample(target.pid).threads <= a.threads:
            threads_back = round(time.monotonic() - closed_at, 2)
            break
        await asyncio.sleep(0.1)
    out["threads_after_close"] = {
        "idle": a.threads,
        "after": proc_sample(target.pid).threads,
        "seconds_to_idle": threads_back,
    }
    return out


async def metrics_scrape(target: ServiceTarget, plan: Plan) -> dict[str, Any]:
    """Scrape time at growing numbers of open sessions; beyond the last step it is extrapolated."""
    steps: list[dict[str, Any]] = []
    held: list[Opened] = []
    try:
        for n in plan.metrics_steps:
            if n > len(held):
                more, errors = await open_many(target, n - len(held), plan.open_concurrency)
                held += more
                if errors["errors"]:
                    say(f"metrics: {errors['errors']} sessions failed to open: {errors['first_error']}")
            await asyncio.sleep(1.0)
            times = []
            for _ in range(plan.metrics_scrapes):
                times.append(await target.scrape_ms())
                await asyncio.sleep(0.05)
            sample = proc_sample(target.pid)
            steps.append(
                {
                    "sessions": len(held),
                    "p50_ms": round(pct(times, 50), 2),
                    "p90_ms": round(pct(times, 90), 2),
                    "max_ms": round(max(times), 2),
                    "server_rss_mb": mb(sample.rss_kb),
                    "server_fds": sample.fds,
                }
            )
            say(f"metrics: {steps[-1]}")
    finally:
        await close_all(target, held)
    out: dict[str, Any] = {
        "scrapes_per_step": plan.metrics_scrapes,
        "steps": steps,
        "target_sessions": plan.metrics_target_sessions,
    }
    measured = [s for s in steps if s["sessions"] >= plan.metrics_target_sessions]
    if measured:
        out["at_target"] = {"measured": True, "p50_ms": measured[0]["p50_ms"], "p90_ms": measured[0]["p90_ms"]}
    elif len(steps) >= 3 and steps[-1]["sessions"] >= 100:
        # Least-squares line through (sessions, p90), never below the worst p90 measured:
        # /metrics renders a fixed registry, so any growth comes from event-loop load. Used only
        # when sessions failed to open short of the target; the figure is labelled an estimate.
        xs = [s["sessions"] for s in steps]
        ys = [s["p90_ms"] for s in steps]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=False)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        out["at_target"] = {
            "measured": False,
            "extrapolated_p90_ms": round(max(max(ys), mean_y + slope * (plan.metrics_target_sessions - mean_x)), 2),
            "from_sessions": xs,
            "slope_ms_per_100_sessions": round(slope * 100, 3),
            "note": f"linear extrapolation of p90 from {xs[-1]} to {plan.metrics_target_sessions} open sessions",
        }
    else:
        out["at_target"] = {"measured": False, "note": "too few sessions held to estimate (--quick?)"}
    return out


# ----------------------------------------------------------------------------- driver

PHASES: dict[str, Callable[[Any, Plan], Awaitable[dict[str, Any]]]] = {
    "latency": latency,
    "residue": residue,
    "vanish": vanish,
    "idle_rss": idle_rss,
    "video_cpu": video_cpu,
    "metrics_scrape": metrics_scrape,
}


async def run(plan: Plan, kinds: list[str], phases: list[str], deadline: float) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {kind: {} for kind in kinds}
    workdir = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    for phase in phases:
        for kind in kinds:  # alternate servers within a phase, so machine load hits both alike
            if phase == "metrics_scrape" and kind != "service":
                continue
            if time.monotonic() > deadline:
                results[kind][phase] = {"skipped": "time budget exhausted"}
                continue
            say(f"{phase} on {kind}")
            started = time.perf_counter()
            try:
                async with running(kind, workdir) as target:
                    await warm_up(target, plan)
                    figures = await PHASES[phase](target, plan)
            except Exception as exc:
                figures = {"failed": repr(exc)[:500]}
            figures["phase_seconds"] = round(time.perf_counter() - started, 1)
            results[kind][phase] = figures
            say(f"{phase} on {kind}: {json.dumps(figures)[:400]}")
    return results


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target with both servers' figure and whether it is met (None when not measured)."""

    def get(kind: str, *path: str) -> Any:
        node: Any = results.get(kind, {})
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def back_within(kind: str) -> float | None:
        back = get(kind, "residue", "seconds_to_idle")
        if not back:
            return None
        values = list(back.values())
        return None if any(v is None for v in values) else max(values)

    checks: dict[str, tuple[Callable[[str], Any], float]] = {
        "offer_answer_p50_ms": (lambda k: get(k, "latency", "offer_answer_ms", "p50"), TARGETS["offer_answer_p50_ms"]),
        "offer_connected_p90_ms": (
            lambda k: get(k, "latency", "offer_connected_ms", "p90"),
            TARGETS["offer_connected_p90_ms"],
        ),
        "offer_connected_max_ms": (
            lambda k: get(k, "latency", "offer_connected_ms", "max"),
            TARGETS["offer_connected_max_ms"],
        ),
        "residue_back_to_idle_s": (back_within, TARGETS["residue_back_to_idle_s"]),
        "residue_rss_growth_mb": (lambda k: get(k, "residue", "rss_growth_mb"), TARGETS["residue_rss_growth_mb"]),
        "rss_per_idle_session_mb": (
            lambda k: get(k, "idle_rss", "rss_per_session_mb"),
            TARGETS["rss_per_idle_session_mb"],
        ),
        "cpu_per_video_session_pct": (
            lambda k: get(k, "video_cpu", "cpu_pct_per_session"),
            TARGETS["cpu_per_video_session_pct"],
        ),
        "metrics_scrape_ms_at_500": (
            lambda k: (
                get(k, "metrics_scrape", "at_target", "p90_ms")
                or get(k, "metrics_scrape", "at_target", "extrapolated_p90_ms")
            ),
            TARGETS["metrics_scrape_ms_at_500"],
        ),
    }
    out: dict[str, Any] = {}
    for name, (read, target) in checks.items():
        row: dict[str, Any] = {"target": target}
        for kind in results:
            value = read(kind)
            row[kind] = value
            row[f"{kind}_ok"] = None if value is None else value <= target
        if name == "residue_back_to_idle_s":
            row["note"] = "None: threads or fds not back to the idle count within the 5 s window"
        if name == "metrics_scrape_ms_at_500" and get("service", "metrics_scrape", "at_target", "measured") is False:
            row["note"] = (
                "extrapolated, not measured at 500 sessions"
                if get("service", "metrics_scrape", "at_target", "extrapolated_p90_ms") is not None
                else "not measured at 500 sessions"
            )
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, short windows")
    parser.add_argument("--only", choices=("service", "naive"), help="one server instead of both")
    parser.add_argument("--phase", action="append", choices=PHASES, help="run only this phase (repeatable)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds; later phases are skipped past it")
    parser.add_argument("--vanishing-client", nargs=3, metavar=("KIND", "URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.vanishing_client:
        kind, url, count = args.vanishing_client
        asyncio.run(vanishing_client(kind, url, int(count)))
        return 0
    plan = QUICK if args.quick else FULL
    kinds = [args.only] if args.only else ["service", "naive"]
    phases = args.phase or list(PHASES)
    restrict_host_addresses([HOST])  # this process's peers: loopback only
    started = time.perf_counter()
    load_before = os.getloadavg()
    results = asyncio.run(run(plan, kinds, phases, time.monotonic() + args.budget))
    document = {
        "benchmark": "sessions",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "aiortc": aiortc.__version__,
        },
        "plan": dataclasses.asdict(plan),
        "targets": TARGETS,
        "results": results,
        "verdict": verdict(results),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
