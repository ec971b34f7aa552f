"""The hub's invariants, against in-memory sinks whose speed the tests control."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest

from media_service.hub import CLOSE_SLOW_CLIENT, Client, DropReason, Hub, encode, size_of
from media_service.metrics import ServiceMetrics


class MemorySink:
    """A WebSocket stand-in: ``gate`` cleared = the peer stopped reading; ``delay`` = a slow peer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.gate = asyncio.Event()
        self.gate.set()
        self.raw: list[str] = []
        self.sending = asyncio.Event()  # set while a send is waiting on the gate
        self.close_gate = asyncio.Event()
        self.close_gate.set()
        self.closed_with: tuple[int, str] | None = None
        self.fail_with: Exception | None = None
        self.cancelled_at: float | None = None  # when the hub cut a send short

    @property
    def received(self) -> list[dict]:
        return [json.loads(text) for text in self.raw]

    async def send_text(self, data: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sending.set()
        try:
            await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            raise
        finally:
            self.sending.clear()
        self.raw.append(data)

    async def close(self, code: int, reason: str) -> None:
        await asyncio.sleep(0)  # a real close suspends: a stray cancellation would land here
        await self.close_gate.wait()
        self.closed_with = (code, reason)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.002)


def sample(metrics: ServiceMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def writer_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("hub-writer:")]


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


@pytest.fixture
async def make_hub(metrics: ServiceMetrics, no_leaks: None) -> AsyncIterator[Callable[..., Hub]]:
    """Hubs that are closed after the test; then no task of any kind may be left (``no_leaks``)."""
    hubs: list[Hub] = []

    def make(**kwargs) -> Hub:
        hub = Hub(metrics, **kwargs)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close_all()
    # Writers of dropped clients finish their bounded close attempt on their own.
    await until(lambda: not writer_tasks(), timeout=15)
    for hub in hubs:
        assert len(hub) == 0


def msg(i: int) -> dict:
    return {"type": "message", "from": {"user": "a", "device": "d"}, "data": i}


async def test_producers_are_plain_functions(make_hub) -> None:
    hub = make_hub()
    for name in ("send", "send_to_user", "broadcast", "connect"):
        assert not inspect.iscoroutinefunction(getattr(hub, name)), name


async def test_order_is_preserved_per_client(make_hub, metrics) -> None:
    hub = make_hub()
    sink = MemorySink()
    client = hub.connect("u", "d1", sink)
    for i in range(2000):
        assert hub.send(client, msg(i))
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the writer run in between, as a real endpoint would
    await until(lambda: len(sink.raw) == 2000)
    assert [m["data"] for m in sink.received] == list(range(2000))
    assert client.reason is None and not client.closed.is_set()
    assert sample(metrics, "media_ws_send_timeouts_total") == 0


async def test_send_to_user_reaches_every_device_of_that_user_only(make_hub, metrics) -> None:
    hub = make_hub()
    sinks = {key: MemorySink() for key in ("a/1", "a/2", "b/1")}
    for key, sink in sinks.items():
        user, device = key.split("/")
        hub.connect(user, device, sink)
    assert sample(metrics, "media_ws_clients") == 3
    assert hub.send_to_user("a", msg(1)) == 2
    assert hub.send_to_user("nobody", msg(2)) == 0
    assert hub.broadcast({"type": "draining", "retry_after": 5}) == 3
    await until(lambda: len(sinks["a/1"].raw) == 2 and len(sinks["a/2"].raw) == 2 and len(sinks["b/1"].raw) == 1)
    assert sinks["a/1"].received == [msg(1), {"type": "draining", "retry_after": 5}]
    assert sinks["b/1"].received == [{"type": "draining", "retry_after": 5}]
    assert {c.device for c in hub.devices("a")} == {"1", "2"}


async def test_fanout_serialises_once(make_hub) -> None:
    hub = make_hub()
    sinks = [MemorySink() for _ in range(50)]
    for i, sink in enumerate(sinks):
        hub.connect("room", f"d{i}", sink)
    assert hub.send_to_user("room", {"type": "message", "data": "x" * 100}) == 50
    await until(lambda: all(sink.raw for sink in sinks))
    first = sinks[0].raw[0]
    assert all(sink.raw[0] is first for sink in sinks)  # the same str object: one json.dumps


async def test_a_blocked_client_does_not_delay_the_others(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=30.0)
    stuck = MemorySink()
    stuck.gate.clear()
    hub.connect("room", "stuck", stuck)
    healthy = [MemorySink() for _ in range(20)]
    for i, sink in enumerate(healthy):
        hub.connect("room", f"d{i}", sink)
    for i in range(100):
        assert hub.send_to_user("room", msg(i)) == 21
        await asyncio.sleep(0)
    # Every healthy client has everything while the stuck one still holds its first send.
    await until(lambda: all(len(sink.raw) == 100 for sink in healthy), timeout=5)
    assert all([m["data"] for m in sink.received] == list(range(100)) for sink in healthy)
    assert stuck.raw == [] and stuck.sending.is_set()
    assert sample(metrics, "media_ws_send_timeouts_total") == 0
    stuck.gate.set()  # it catches up: it loses nothing either
    await until(lambda: len(stuck.raw) == 100)
    assert [m["data"] for m in stuck.received] == list(range(100))


async def test_fanout_to_1000_clients_returns_at_once(make_hub) -> None:
    hub = make_hub(send_timeout=30.0)
    sinks = [MemorySink() for _ in range(1000)]
    for sink in sinks[:100]:
        sink.gate.clear()  # a tenth of them never take anything
    for i, sink in enumerate(sinks):
        hub.connect("room", f"d{i}", sink)
    await asyncio.sleep(0)
    started = time.perf_counter()
    for i in range(10):
        assert hub.send_to_user("room", msg(i)) == 1000
    elapsed = time.perf_counter() - started
    # 10,000 queue appends; generous for a shared CPU, far below any per-client wait.
    assert elapsed < 0.5, elapsed
    await until(lambda: all(len(sink.raw) == 10 for sink in sinks[100:]))
    for sink in sinks[:100]:
        sink.gate.set()


async def test_queue_is_bounded_and_overflow_drops_at_once(make_hub, metrics) -> None:
    hub = make_hub(buffer=4, send_timeout=30.0)
    sink = MemorySink()
    sink.gate.clear()
    client = hub.connect("u", "d", sink)
    assert hub.send(client, msg(0))
    await until(sink.sending.is_set)  # message 0 is in flight, the queue is empty
    for i in range(1, 9):  # 4 queued + 4 waiting for room
        assert hub.send(client, msg(i)), i
        assert client.queued <= 8
    assert client.queued == 8 and not client.closed.is_set()
    assert hub.send(client, msg(9)) is False  # a 5th waiting message: beyond the cap
    assert client.closed.is_set() and client.reason is DropReason.QUEUE_FULL
    assert client.queued == 0  # the backlog is released at once
    assert hub.send(client, msg(10)) is False
    assert sample(metrics, "media_ws_send_timeouts_total") == 1
    assert sample(metrics, "media_ws_clients") == 0 and len(hub) == 0
    # The in-flight send is ended at once, then the client gets its close frame.
    await until(lambda: sink.closed_with is not None, timeout=5)
    assert sink.closed_with[0] == CLOSE_SLOW_CLIENT
    assert sink.raw == []


async def test_blocked_send_is_dropped_after_send_timeout(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=0.3)
    stuck, healthy = MemorySink(), MemorySink()
    stuck.gate.clear()
    slow = hub.connect("room", "stuck", stuck)
    ok = hub.connect("room", "ok", healthy)
    started = time.monotonic()
    assert hub.send_to_user("room", msg(0)) == 2
    await asyncio.wait_for(slow.closed.wait(), timeout=10)
    took = time.monotonic() - started
    assert 0.25 <= took < 3.0, took
    assert slow.reason is DropReason.SEND_TIMEOUT
    assert sample(metrics, "media_ws_send_timeouts_total") == 1
    assert sample(metrics, "media_ws_clients") == 1 and hub.clients == [ok]
    assert hub.send_to_user("room", msg(1)) == 1
    await until(lambda: len(healthy.raw) == 2 and stuck.closed_with is not None)
    assert stuck.closed_with[0] == CLOSE_SLOW_CLIENT
    assert not ok.closed.is_set()


async def test_queue_that_stays_full_is_dropped_after_send_timeout(make_hub, metrics) -> None:
    # Each send takes 0.4 s, under the 0.6 s send timeout, so no single send times out; but the
    # messages waiting behind the full queue (buffer 3) would need 0.8 s to get in.
    hub = make_hub(buffer=3, send_timeout=0.6)
    sink = MemorySink(delay=0.4)
    client = hub.connect("u", "d", sink)
    started = time.monotonic()
    for i in range(6):
        assert hub.send(client, msg(i))
    await asyncio.wait_for(client.closed.wait(), timeout=10)
    took = time.monotonic() - started
    assert client.reason is DropReason.QUEUE_FULL
    assert 0.5 <= took < 3.0, took
    assert sample(metrics, "media_ws_send_timeouts_total") == 1
    await until(lambda: sink.closed_with is not None)
    assert sink.closed_with[0] == CLOSE_SLOW_CLIENT
    assert [m["data"] for m in sink.received] == [0]  # the second send was cut short by the drop


async def test_client_that_drains_in_time_loses_nothing(make_hub, metrics) -> None:
    hub = make_hub(buffer=3, send_timeout=0.8)
    sink = MemorySink()
    sink.gate.clear()
    client = hub.connect("u", "d", sink)
    for i in range(7):  # 1 in flight, 3 queued, 3 waiting for room
        assert hub.send(client, msg(i))
        await asyncio.sleep(0)
    assert client.queued == 6
    await asyncio.sleep(0.2)  # the peer stalls for a while, within the timeout
    sink.gate.set()
    await until(lambda: len(sink.raw) == 7)
    assert [m["data"] for m in sink.received] == list(range(7))
    await asyncio.sleep(1.2)  # past the moment the stall timer would have fired
    assert not client.closed.is_set() and client.reason is None
    assert hub.send(client, msg(7))
    await until(lambda: len(sink.raw) == 8)
    assert sample(metrics, "media_ws_send_timeouts_total") == 0
    assert sample(metrics, "media_ws_clients") == 1


async def test_broken_connection_is_removed_without_counting_a_timeout(make_hub, metrics) -> None:
    hub = make_hub()
    sink = MemorySink()
    sink.fail_with = ConnectionResetError("peer went away")
    client = hub.connect("u", "d", sink)
    assert hub.send(client, msg(0))
    await asyncio.wait_for(client.closed.wait(), timeout=5)
    assert client.reason is DropReason.SEND_FAILED
    assert sink.closed_with is None
    assert sample(metrics, "media_ws_send_timeouts_total") == 0
    assert sample(metrics, "media_ws_clients") == 0


async def test_disconnect_is_idempotent_and_leaves_no_task(make_hub, metrics) -> None:
    hub = make_hub()
    a, b = MemorySink(), MemorySink()
    b.gate.clear()
    ca = hub.connect("u", "a", a)
    cb = hub.connect("u", "b", b)
    assert hub.send(cb, msg(0))
    await until(b.sending.is_set)  # b's writer is parked inside a send
    assert sample(metrics, "media_ws_clients") == 2
    await asyncio.gather(hub.disconnect(cb), hub.disconnect(cb))
    await hub.disconnect(cb)
    assert cb.closed.is_set() and cb.reason is DropReason.DISCONNECTED
    assert cb._writer is not None and cb._writer.done()
    assert sample(metrics, "media_ws_clients") == 1
    await hub.disconnect(ca)
    await hub.disconnect(ca)
    assert sample(metrics, "media_ws_clients") == 0 and len(hub) == 0
    assert hub.send(ca, msg(1)) is False and hub.send_to_user("u", msg(1)) == 0
    assert writer_tasks() == []
    assert b.closed_with is None  # a plain disconnect sends no close frame: the endpoint owns that
    assert sample(metrics, "media_ws_send_timeouts_total") == 0


async def test_disconnect_of_a_dropped_client_keeps_the_reason(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=0.2)
    sink = MemorySink()
    sink.gate.clear()
    client = hub.connect("u", "d", sink)
    hub.send(client, msg(0))
    await asyncio.wait_for(client.closed.wait(), timeout=10)
    await hub.disconnect(client)  # what the endpoint does once `closed` is set
    assert client.reason is DropReason.SEND_TIMEOUT
    assert sink.closed_with is not None and sink.closed_with[0] == CLOSE_SLOW_CLIENT
    assert writer_tasks() == []
    assert sample(metrics, "media_ws_send_timeouts_total") == 1
    assert sample(metrics, "media_ws_clients") == 0


async def test_close_of_a_dead_peer_is_bounded(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=0.2, close_timeout=0.3)
    sink = MemorySink()
    sink.gate.clear()
    sink.close_gate.clear()  # not even the close frame can be written
    client = hub.connect("u", "d", sink)
    hub.send(client, msg(0))
    await asyncio.wait_for(client.closed.wait(), timeout=10)
    started = time.monotonic()
    await asyncio.wait_for(hub.disconnect(client), timeout=10)
    assert time.monotonic() - started < 3.0
    assert sink.closed_with is None
    assert writer_tasks() == []


async def test_close_all_flushes_then_closes(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=0.3)
    sinks = [MemorySink() for _ in range(5)]
    clients = [hub.connect("room", f"d{i}", sink) for i, sink in enumerate(sinks)]
    stuck = MemorySink()
    stuck.gate.clear()
    stuck.close_gate.clear()
    stuck_client = hub.connect("room", "stuck", stuck)
    for i in range(50):
        assert hub.send_to_user("room", msg(i)) == 6
    started = time.monotonic()
    await hub.close_all(code=1001, reason="server shutting down")
    assert time.monotonic() - started < 3.0  # the stuck client costs at most its two bounded waits
    for sink in sinks:
        assert [m["data"] for m in sink.received] == list(range(50))
        assert sink.closed_with == (1001, "server shutting down")
    assert all(c.closed.is_set() and c.reason is DropReason.SHUTDOWN for c in [*clients, stuck_client])
    assert stuck.closed_with is None
    assert writer_tasks() == []
    assert len(hub) == 0 and sample(metrics, "media_ws_clients") == 0
    assert sample(metrics, "media_ws_send_timeouts_total") == 0  # shutdown is not a slow client
    assert hub.broadcast(msg(99)) == 0


async def test_metrics_stay_exact_under_churn(make_hub, metrics) -> None:
    hub = make_hub(send_timeout=0.2)
    healthy = [hub.connect("room", f"h{i}", MemorySink()) for i in range(30)]
    stuck_sinks = [MemorySink() for _ in range(7)]
    for sink in stuck_sinks:
        sink.gate.clear()
    stuck = [hub.connect("room", f"s{i}", sink) for i, sink in enumerate(stuck_sinks)]
    assert sample(metrics, "media_ws_clients") == 37
    for c in healthy[:10]:
        await hub.disconnect(c)
    assert hub.send_to_user("room", msg(0)) == 27
    await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in stuck)), timeout=10)
    assert sample(metrics, "media_ws_send_timeouts_total") == 7
    assert sample(metrics, "media_ws_clients") == 20 == len(hub)
    assert set(hub.clients) == set(healthy[10:])
    assert all(c.reason is None for c in healthy[10:])


async def test_no_waiting_drops_on_the_first_message_that_finds_the_queue_full(make_hub, metrics) -> None:
    hub = make_hub(buffer=2, send_timeout=30.0, max_waiting=0)
    sink = MemorySink()
    sink.gate.clear()
    client = hub.connect("u", "d", sink)
    assert hub.send(client, msg(0))
    await until(sink.sending.is_set)
    assert hub.send(client, msg(1)) and hub.send(client, msg(2))
    assert client.queued == 2 and not client.closed.is_set()
    assert hub.send(client, msg(3)) is False
    assert client.reason is DropReason.QUEUE_FULL
    assert sample(metrics, "media_ws_send_timeouts_total") == 1


def test_rejects_nonsense_settings(metrics) -> None:
    with pytest.raises(ValueError):
        Hub(metrics, buffer=0)
    with pytest.raises(ValueError):
        Hub(metrics, send_timeout=0)
    with pytest.raises(ValueError):
        Hub(metrics, max_waiting=-1)


async def test_client_repr_names_it(make_hub) -> None:
    hub = make_hub()
    client: Client = hub.connect("u", "d", MemorySink())
    assert "'u'" in repr(client) and "active" in repr(client)


async def test_each_blocked_send_gets_its_own_full_timeout(make_hub, metrics) -> None:
    # One watchdog serves every send: sends that start at different moments must each get
    # send_timeout from their own start, neither less nor much more.
    timeout = 0.5
    hub = make_hub(send_timeout=timeout)
    sinks = [MemorySink() for _ in range(3)]
    clients = [hub.connect("u", f"d{i}", sink) for i, sink in enumerate(sinks)]
    started: list[float] = []
    for client, sink in zip(clients, sinks, strict=True):
        sink.gate.clear()
        started.append(time.monotonic())
        assert hub.send(client, msg(0))
        await until(sink.sending.is_set)
        await asyncio.sleep(0.2)  # the next client blocks later
    dropped_after: list[float] = []
    for client, sink, t0 in zip(clients, sinks, started, strict=True):
        await asyncio.wait_for(client.closed.wait(), timeout=10)
        assert client.reason is DropReason.SEND_TIMEOUT
        assert sink.cancelled_at is not None
        dropped_after.append(sink.cancelled_at - t0)
    assert all(timeout - 0.05 <= d < timeout + 1.0 for d in dropped_after), dropped_after
    assert sample(metrics, "media_ws_send_timeouts_total") == 3


async def test_writer_runs_in_the_callers_context(make_hub) -> None:
    # Task ownership reads a ContextVar set around connect(): the writer must inherit it.
    owner: contextvars.ContextVar[str] = contextvars.ContextVar("owner", default="none")
    seen: list[str] = []

    class Recording(MemorySink):
        async def send_text(self, data: str) -> None:
            seen.append(owner.get())
            await super().send_text(data)

    hub = make_hub()
    token = owner.set("ws:1")
    try:
        client = hub.connect("u", "d", Recording())
    finally:
        owner.reset(token)
    assert hub.send(client, msg(0))
    await until(lambda: seen == ["ws:1"])


async def test_queue_is_bounded_in_bytes_too(make_hub, metrics) -> None:
    hub = make_hub(buffer=1000, send_timeout=30.0, buffer_bytes=65536)
    sink = MemorySink()
    sink.gate.clear()
    client = hub.connect("u", "d", sink)
    big = {"type": "message", "data": "x" * 30000}
    assert hub.send(client, big)
    await until(sink.sending.is_set)  # in flight: out of the queue
    for _ in range(4):  # 4 × 30 KB queued: under twice 64 KiB
        assert hub.send(client, big)
    assert hub.queued_bytes > 4 * 30000 and not client.closed.is_set()
    assert hub.send(client, big) is False  # a fifth would take it past 128 KiB
    assert client.reason is DropReason.QUEUE_FULL and hub.queued_bytes == 0


async def test_a_first_message_goes_in_whatever_its_size(make_hub) -> None:
    hub = make_hub(buffer_bytes=65536)
    sink = MemorySink()
    client = hub.connect("u", "d", sink)
    assert hub.send(client, {"data": "y" * 200_000})
    await until(lambda: len(sink.raw) == 1)
    assert hub.queued_bytes == 0


async def test_the_global_budget_drops_clients_that_are_behind(make_hub) -> None:
    hub = make_hub(buffer=1000, send_timeout=2.0, buffer_bytes=1 << 20, budget_bytes=100_000)
    stuck_sinks = [MemorySink() for _ in range(3)]
    for sink in stuck_sinks:
        sink.gate.clear()
    stuck = [hub.connect("room", f"s{i}", sink) for i, sink in enumerate(stuck_sinks)]
    fast_sink = MemorySink()
    fast = hub.connect("room", "fast", fast_sink)
    sent = 0
    while all(not c.closed.is_set() for c in stuck) and sent < 100:
        hub.send_to_user("room", {"data": "z" * 10000})
        sent += 1
        await asyncio.sleep(0)
    assert sent < 100 and hub.queued_bytes <= 100_000
    assert any(c.reason is DropReason.QUEUE_FULL for c in stuck)
    assert not fast.closed.is_set()  # never behind: never dropped
    await until(lambda: len(fast_sink.raw) == sent)
    for sink in stuck_sinks:  # let the ones still in the hub go at close_all
        sink.gate.set()


def test_relayed_text_stays_utf8_and_lone_surrogates_are_escaped() -> None:
    text = encode({"data": "é" * 1000})
    assert len(text.encode()) < 2100  # was 6 bytes a character as \u00e9 escapes
    lone = encode(json.loads('{"data": "a\\ud800b\\udc00"}'))
    assert lone == '{"data":"a\\ud800b\\udc00"}' and lone.encode()  # encodable, same meaning
    pair = encode(json.loads('{"data": "\\ud83d\\ude00"}'))
    assert json.loads(pair) == {"data": "😀"} and size_of(pair) == len(pair.encode())
