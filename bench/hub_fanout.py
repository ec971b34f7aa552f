"""Fan-out through the signaling hub with slow clients among the fast ones.

1,000 WebSocket clients are devices of one user; a tenth never read after the handshake. A sender
relays messages to that user at a steady rate, and the benchmark reports:

- delivery latency to the healthy clients: from the sender's send to the kernel's receive timestamp
  on the client's socket (same host, same clock);
- for each non-reader, how long after its socket stopped taking data the server dropped it;
- whether any healthy client was dropped.

Getting a non-reader to push back takes a full socket: its kernel receive buffer, the server's send
buffer (sized from the segment size: non-readers announce 1400 bytes, as on a real network, instead
of loopback's 64 KiB) and uvicorn's write buffer, about 0.15 MiB in all. A few large "fill" messages
do that first, and every client waits for them, so the steady phase starts with all non-readers
blocked: from then on each of them should be dropped about MEDIA_WS_SEND_TIMEOUT later.

Run from the repository root: ``PYTHONPATH=. .venv/bin/python bench/hub_fanout.py`` (starts the
service on 127.0.0.5). ``--ws-url/--admin-url`` measure a running service instead; per-client drop
times then come from the counter only. Loopback only, bounded: about 30 s on 2 cores. Prints one
JSON document; exits 1 when a target is missed (p99 > 100 ms, a healthy client dropped, a message
lost or reordered, a non-reader kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from media_service.auth import read_secret
from tests.support.media_process import TEST_SECRET, access_query, start_media_service, stop_media_service
from tests.support.non_reader import NonReader

FILL_MESSAGES = 4
FILL_PAD = "f" * 60_000  # under the service's 64 KiB message limit; 4 of them > 0.15 MiB


# Linux: the kernel stamps each received segment (CLOCK_REALTIME) when this option is on.
SO_TIMESTAMPNS = 35


class Healthy:
    """A reading client: the websockets protocol fed from ``recvmsg`` in a reader callback.

    Latency is taken from the kernel's receive timestamp, not from when this process gets round to
    the frame: one process reads all 900 healthy clients in turn, and its own queueing would
    otherwise be counted as the service's. No task and no queue per connection.
    """

    def __init__(self, sock: socket.socket, url: str, sent_at: dict[int, int]) -> None:
        self.sock = sock
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.sent_at = sent_at
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.latencies: list[float] = []
        self.seen = 0  # messages received, fill included
        self.out_of_order = 0
        self.last = -1

    @classmethod
    async def open(cls, ws_url: str, access: str, device: str, sent_at: dict[int, int]) -> Healthy:
        parts = urlsplit(ws_url)
        assert parts.hostname is not None and parts.port is not None
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (parts.hostname, parts.port))
            client = cls(sock, f"{ws_url}?device={device}&{access}", sent_at)
            client.protocol.send_request(client.protocol.connect())
            client.flush()
            loop.add_reader(sock.fileno(), client.on_readable)
            await asyncio.wait_for(asyncio.shield(client.opened), 10)
        except BaseException:
            with contextlib.suppress(ValueError):
                loop.remove_reader(sock.fileno())
            sock.close()
            raise
        return client

    def on_readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        arrived = time.time_ns()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", raw[:16])
                arrived = seconds * 1_000_000_000 + nanoseconds
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.on_message(json.loads(event.data), arrived)
        self.flush()  # pongs and the closing handshake
        if not data:
            self.end()

    def on_message(self, message: dict, arrived_ns: int) -> None:
        self.seen += 1
        data = message.get("data")
        if not isinstance(data, dict) or "seq" not in data:
            return
        seq = data["seq"]
        if seq != self.last + 1:
            self.out_of_order += 1
        self.last = seq
        self.latencies.append((arrived_ns - self.sent_at[seq]) / 1e9)

    def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            with contextlib.suppress(OSError):  # a control frame to a peer that is gone
                if chunk:
                    self.sock.send(chunk)
                else:
                    self.sock.shutdown(socket.SHUT_WR)

    def end(self) -> None:
        with contextlib.suppress(ValueError):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    @property
    def closed_by_server(self) -> bool:
        return self.lost.done() or self.protocol.close_rcvd is not None

    async def close(self) -> None:
        if not self.lost.done():
            self.protocol.send_close(1000)
            self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.lost), 5)
            self.end()
        self.sock.close()


@dataclass
class Target:
    ws_url: str
    admin_url: str
    log: Path | None  # the service's log when this benchmark started it
    pid: int | None  # and its process
    secret: bytes = TEST_SECRET  # the service's token secret: the clients mint their tokens with it

    def access(self, user: str) -> str:
        return access_query(user, secret=self.secret)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def target_address(ws_url: str) -> tuple[str, int]:
    parts = urlsplit(ws_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def metric(admin_url: str, name: str) -> float:
    text = httpx.get(f"{admin_url}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else values[0]


def drops_from_log(log: Path) -> dict[str, tuple[float, str]]:
    """device → (wall-clock time, reason) of every drop the service logged."""
    drops = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"ws_client_dropped"' not in line:
            continue
        event = json.loads(line)
        drops[event["device"]] = (
            datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp(),
            event["reason"],
        )
    return drops


@contextlib.asynccontextmanager
async def service(args: argparse.Namespace) -> AsyncIterator[Target]:
    if args.ws_url:
        yield Target(args.ws_url, args.admin_url, None, None, read_secret(args.secret_file).key)
        return
    with tempfile.TemporaryDirectory() as tmp:
        # The sender is one connection relaying fast, and every client comes from one address.
        env = {
            "MEDIA_WS_RATE_LIMIT": "100000",
            "MEDIA_WS_RELAY_RATE_BYTES": str(1 << 40),
            "MEDIA_MAX_CONNECTIONS_PER_ADDRESS": "100000",
            "MEDIA_MAX_CONNECTIONS": "100000",
        }
        media = await asyncio.to_thread(start_media_service, Path(tmp), host=args.host, env=env)
        try:
            yield Target(media.ws_url, media.admin_url, media.log_path, media.proc.pid)
        finally:
            await asyncio.to_thread(stop_media_service, media)


def raise_fd_limit(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < needed:
        sys.exit(f"need {needed} open files, the hard limit is {hard}")
    return soft, hard


async def run(args: argparse.Namespace) -> dict:
    n_slow = args.clients * args.non_reader_percent // 100
    n_healthy = args.clients - n_slow
    sent_at: dict[int, int] = {}  # seq → wall clock in ns, to compare with the kernel's stamps
    async with service(args) as target:
        sender = await connect(f"{target.ws_url}?device=sender&{target.access('bench')}")
        healthy: list[Healthy] = []
        slow: list[NonReader] = []
        try:
            # Non-readers first: a fan-out reaches clients in the order they connected, so their
            # sockets fill, and their sends block, right after the sender's fill messages.
            host, port = target_address(target.ws_url)
            slow = list(
                await asyncio.gather(
                    *(NonReader.open(host, port, f"/ws?device=n{i}&{target.access('room')}") for i in range(n_slow))
                )
            )
            for start in range(0, n_healthy, 50):
                healthy += await asyncio.gather(
                    *(
                        Healthy.open(target.ws_url, target.access("room"), f"h{i}", sent_at)
                        for i in range(start, min(start + 50, n_healthy))
                    )
                )
            clients_gauge = await asyncio.to_thread(metric, target.admin_url, "media_ws_clients")
            timeouts_before = await asyncio.to_thread(metric, target.admin_url, "media_ws_send_timeouts_total")

            # Fill the non-readers' sockets; everyone waits until the healthy clients have it all.
            for k in range(FILL_MESSAGES):
                await sender.send(json.dumps({"type": "message", "to": "room", "data": {"fill": k, "pad": FILL_PAD}}))
            # The non-readers' sends block once the server has relayed this, so a drop time measured
            # from here is, if anything, too long.
            blocked_at = time.time()
            await wait_for(lambda: all(c.seen >= FILL_MESSAGES for c in healthy), 120, "fill delivered")

            # Steady phase: `rate` relays a second, each reaching every device of the user.
            interval = 1.0 / args.rate
            cpu_bench = time.process_time()
            cpu_server = cpu_seconds(target.pid) if target.pid else None
            started = time.perf_counter()
            counter_at: float | None = None
            for seq in range(args.messages):
                await asyncio.sleep(max(0.0, started + seq * interval - time.perf_counter()))
                sent_at[seq] = time.time_ns()
                await sender.send(
                    json.dumps({"type": "message", "to": "room", "data": {"seq": seq, "pad": "p" * args.size}})
                )
                if counter_at is None and seq % args.rate == 0:
                    dropped = await asyncio.to_thread(metric, target.admin_url, "media_ws_send_timeouts_total")
                    if dropped - timeouts_before >= n_slow:
                        counter_at = time.time()
            await wait_for(
                lambda: all(c.seen >= FILL_MESSAGES + args.messages for c in healthy), 60, "steady delivered"
            )
            wall = time.perf_counter() - started
            cpu_bench = time.process_time() - cpu_bench
            if target.pid and cpu_server is not None:
                cpu_server = cpu_seconds(target.pid) - cpu_server

            timeouts = (
                await asyncio.to_thread(metric, target.admin_url, "media_ws_send_timeouts_total") - timeouts_before
            )
            clients_after = await asyncio.to_thread(metric, target.admin_url, "media_ws_clients")
            healthy_closed = sum(1 for c in healthy if c.closed_by_server)
            latencies = [x for c in healthy for x in c.latencies]
            result: dict = {
                "load_average_1m": round(os.getloadavg()[0], 2),  # the CPUs are shared: context for the figures
                "cpus": os.cpu_count(),
                "clients": args.clients,
                "healthy": n_healthy,
                "non_readers": n_slow,
                "connected_gauge_before": clients_gauge,
                "connected_gauge_after": clients_after,
                "steady_messages": args.messages,
                "rate_per_s": args.rate,
                "payload_bytes": args.size,
                # Share of one CPU each side used in the steady phase: which one set the pace.
                "steady_cpu_share": {
                    "benchmark": round(cpu_bench / wall, 2),
                    "service": round(cpu_server / wall, 2) if cpu_server is not None else None,
                },
                # CPU per delivered message: the service's share times the healthy clients is what one
                # fan-out costs it; the benchmark's share is added to every latency below, since one
                # process reads all the healthy clients' frames in turn.
                "cpu_us_per_delivery": {
                    "benchmark": round(1e6 * cpu_bench / max(1, n_healthy * args.messages), 1),
                    "service": round(1e6 * cpu_server / max(1, n_healthy * args.messages), 1)
                    if cpu_server is not None
                    else None,
                },
                "deliveries": len(latencies),
                "deliveries_expected": n_healthy * args.messages,
                "latency_ms": {
                    "p50": round(1000 * quantile(latencies, 0.50), 2),
                    "p99": round(1000 * quantile(latencies, 0.99), 2),
                    "max": round(1000 * max(latencies), 2),
                },
                "out_of_order": sum(c.out_of_order for c in healthy),
                "send_timeouts": timeouts,
                "healthy_closed_by_server": healthy_closed,
            }
            if target.log is not None:
                drops = drops_from_log(target.log)
                after = sorted(t - blocked_at for d, (t, _) in drops.items() if d.startswith("n"))
                result["non_readers_dropped"] = len(after)
                result["drop_after_blocked_s"] = (
                    {
                        "min": round(after[0], 3),
                        "p50": round(statistics.median(after), 3),
                        "max": round(after[-1], 3),
                    }
                    if after
                    else None
                )
                result["drop_reasons"] = sorted({reason for _, reason in drops.values()})
                result["healthy_dropped"] = sorted(d for d in drops if not d.startswith("n"))
            elif counter_at is not None:
                result["all_non_readers_dropped_within_s"] = round(counter_at - blocked_at, 3)
            result["ok"] = bool(
                result["latency_ms"]["p99"] <= 100
                and timeouts == n_slow
                and healthy_closed == 0
                and not result.get("healthy_dropped")
                and result["deliveries"] == result["deliveries_expected"]
                and result["out_of_order"] == 0
            )
            return result
        finally:
            for client in slow:
                client.sock.close()
            await asyncio.gather(*(c.close() for c in healthy), sender.close(), return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--non-reader-percent", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100, help="relays in the steady phase")
    parser.add_argument("--rate", type=int, default=10, help="relays a second")
    parser.add_argument("--size", type=int, default=200, help="payload characters per relay")
    parser.add_argument("--host", default="127.0.0.5", help="loopback address to start the service on")
    parser.add_argument("--ws-url", help="measure a running service, e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument("--admin-url", help="its admin base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--secret-file", help="its MEDIA_AUTH_SECRET_FILE, to mint the clients' access tokens")
    args = parser.parse_args()
    for url in (args.ws_url, args.admin_url, f"http://{args.host}"):
        if url and not (urlsplit(url).hostname or "").startswith("127."):
            parser.error(f"{url}: loopback (127.0.0.0/8) only")
    if not (bool(args.ws_url) == bool(args.admin_url) == bool(args.secret_file)):
        parser.error("--ws-url, --admin-url and --secret-file go together")
    if not 1 <= args.clients <= 5000 or not 1 <= args.messages <= 10_000 or not 1 <= args.rate <= 1000:
        parser.error("clients 1-5000, messages 1-10000, rate 1-1000")
    # Our sockets, plus the service's when we start it (it inherits the limit).
    raise_fd_limit(2 * args.clients + 256)
    result = asyncio.run(asyncio.wait_for(run(args), timeout=600))
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)  # figures printed either way; non-zero = a target missed


if __name__ == "__main__":
    main()
