"""The signaling hub: fan-out of JSON messages to WebSocket clients through bounded per-client queues.

Every client has its own queue and one writer task that sends from it. Producers (``send``,
``send_to_user``, ``broadcast``) are synchronous: they serialise the message once, append the text to
each queue and return, so a fan-out costs O(clients) and never waits for any client.

A client that cannot keep up is dropped instead of slowing anyone down:

* each websocket send is bounded by ``send_timeout`` (uvicorn applies real TCP backpressure, so the
  send of a client that stops reading blocks). One hub-wide watchdog timer enforces it: a timer per
  send would more than double the hub's cost per message, and almost every send completes at once;
* a queue holds at most ``buffer`` messages. A message that finds it full waits behind it, like a
  sender blocked on a full channel, but without a task: one timer per client is armed when the queue
  overflows and cancelled once the writer has taken the waiting messages in. If it fires, the client
  is dropped. The waiting messages are capped too (``max_waiting``, by default ``buffer``), so a
  client never holds more than ``2 * buffer`` references to texts that are shared with every other
  client of the fan-out;
* the same holds in bytes: past ``buffer_bytes`` queued the stall timer is armed, and a message that
  would take a client past twice that drops it (a first message always goes in, whatever its size).
  Counts alone let 16 slow readers of 64 KiB messages hold 933 MB;
* all queues together hold at most ``budget_bytes``: past it, a message for a client that is behind
  (its queue not empty) drops that client, so a fast client still gets everything and the process's
  memory stays bounded whatever the number of slow ones. Bytes are counted per reference: a text
  shared by a fan-out counts once per recipient, an upper bound of what it holds.

So a client receives every message in order, or is dropped: there is never a silent gap.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable
from enum import Enum, StrEnum
from typing import Any, Protocol

from media_common import logs
from media_service.metrics import ServiceMetrics

log = logs.get(__name__)

# 1013 "Try Again Later": the drop is a transient, server-side capacity decision (the client or its
# network was too slow for a moment), so the client should reconnect with backoff. 1008 "Policy
# Violation" is for a client that sent something it must not, which a reconnect would repeat.
CLOSE_SLOW_CLIENT = 1013


class MessageSink(Protocol):
    """What the hub writes to: a thin adapter over starlette's WebSocket."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class _State(Enum):
    ACTIVE = "active"  # in the hub, taking messages
    CLOSING = "closing"  # close_all: flushing what is queued, then a close frame
    DROPPED = "dropped"  # too slow: queue discarded, close frame 1013
    GONE = "gone"  # disconnected or its connection failed: nothing more to send


class DropReason(StrEnum):
    SEND_TIMEOUT = "send_timeout"  # one websocket send took longer than send_timeout
    QUEUE_FULL = "queue_full"  # the queue stayed full for send_timeout, or the waiting overflowed
    DISCONNECTED = "disconnected"  # the endpoint ended the connection
    SEND_FAILED = "send_failed"  # the connection broke under a send
    SHUTDOWN = "shutdown"  # close_all


class Client:
    """One WebSocket connection of a device. ``closed`` is set once it leaves the hub."""

    __slots__ = (
        "_close",
        "_flush_deadline",
        "_interrupted",
        "_queue",
        "_queued_bytes",
        "_stall",
        "_state",
        "_waiter",
        "_writer",
        "closed",
        "device",
        "reason",
        "sink",
        "user",
    )

    def __init__(self, user: str, device: str, sink: MessageSink) -> None:
        self.user = user
        self.device = device
        self.sink = sink
        self.closed = asyncio.Event()
        self.reason: DropReason | None = None
        self._state = _State.ACTIVE
        self._queue: deque[tuple[str, int]] = deque()  # texts and their UTF-8 sizes
        self._queued_bytes = 0
        self._waiter: asyncio.Future[None] | None = None  # the idle writer waits on it
        self._stall: asyncio.TimerHandle | None = None
        self._interrupted = False  # the hub cancelled the send in progress (timeout or drop)
        self._close: tuple[int, str] | None = None
        self._flush_deadline = 0.0
        self._writer: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Messages accepted but not yet handed to the websocket (waiting ones included)."""
        return len(self._queue)

    def __repr__(self) -> str:
        return f"Client({self.user!r}, {self.device!r}, {self._state.value})"


#: Lone surrogates (a client's JSON may hold "\\ud800"): only they need escaping to stay encodable.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def encode(message: dict[str, Any]) -> str:
    """Compact JSON, non-ASCII text as UTF-8 rather than escapes (which made a 64 KiB frame of
    non-ASCII text about 196 KB on relay). Lone surrogates from a client's JSON are the exception:
    a text that fails to encode at send time would break the connection of every recipient, so
    they alone are escaped (json.loads pairs every valid surrogate pair, so any left are lone, and
    they can only be inside JSON strings, where an escape means the same)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    if text.isascii():
        return text
    return _SURROGATE.sub(_escape_surrogate, text)


def size_of(text: str) -> int:
    """The UTF-8 size of a text from ``encode``."""
    return len(text) if text.isascii() else len(text.encode())


def _wake(client: Client) -> None:
    waiter = client._waiter
    if waiter is not None:
        client._waiter = None
        if not waiter.done():
            waiter.set_result(None)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("hub_writer_crashed", task=task.get_name(), exc_info=exc)


class Hub:
    def __init__(
        self,
        metrics: ServiceMetrics,
        buffer: int = 256,
        send_timeout: float = 1.0,
        close_timeout: float = 5.0,
        max_waiting: int | None = None,
        presence: Callable[[str, bool], None] | None = None,
        buffer_bytes: int = 1 << 20,
        budget_bytes: int = 256 << 20,
    ) -> None:
        """``max_waiting`` (default: ``buffer``) caps the messages waiting behind a full queue; 0 drops
        a client as soon as a message finds its queue full. ``presence(user, online)`` hears when a
        user's first device connects and when the last one leaves (the bus subscribes by it)."""
        if buffer < 1 or send_timeout <= 0 or close_timeout <= 0 or (max_waiting or 0) < 0:
            raise ValueError("buffer, send_timeout and close_timeout must be positive, max_waiting >= 0")
        self._metrics = metrics
        self._buffer = buffer
        self._limit = buffer + (buffer if max_waiting is None else max_waiting)  # queued + waiting
        self._buffer_bytes = buffer_bytes
        self._limit_bytes = 2 * buffer_bytes
        self._budget_bytes = budget_bytes
        self._queued_bytes = 0  # over every client's queue
        self._send_timeout = send_timeout
        # A dropped client's close frame may wait for its socket to drain a little longer than a send:
        # if the client reads again it learns why it was closed. The writer ends either way.
        self._close_timeout = close_timeout
        self._users: dict[str, dict[Client, None]] = {}
        self._clients: dict[Client, None] = {}
        self._sending: dict[Client, float] = {}  # client → deadline of its send in progress
        self._watchdog: asyncio.TimerHandle | None = None
        self._presence = presence
        metrics.ws_clients.set(0)

    # --- connections ---------------------------------------------------------------------------

    def connect(self, user: str, device: str, sink: MessageSink) -> Client:
        """Register a connection and start its writer in the caller's context (for task ownership)."""
        client = Client(user, device, sink)
        self._clients[client] = None
        devices = self._users.get(user)
        if devices is None:
            devices = self._users[user] = {}
            if self._presence is not None:
                self._presence(user, True)
        devices[client] = None
        self._metrics.ws_clients.set(len(self._clients))
        client._writer = asyncio.create_task(self._write(client), name=f"hub-writer:{user}/{device}")
        client._writer.add_done_callback(_report_crash)
        return client

    async def disconnect(self, client: Client) -> None:
        """Idempotent. Stops the writer; a pending close frame (drop, shutdown) gets its bounded chance."""
        self._remove(client, _State.GONE, DropReason.DISCONNECTED)
        writer = client._writer
        if writer is None or writer.done():
            return
        if client._close is None:
            writer.cancel()
        try:
            await asyncio.wait((writer,))
        except asyncio.CancelledError:
            writer.cancel()
            raise

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Flush every queue (bounded by send_timeout), then close each client with ``code``."""
        deadline = asyncio.get_running_loop().time() + self._send_timeout
        writers = []
        for client in list(self._clients):
            client._flush_deadline = deadline
            if self._remove(client, _State.CLOSING, DropReason.SHUTDOWN):
                client._close = (code, reason)
            if client._writer is not None:
                writers.append(client._writer)
        if writers:
            await asyncio.wait(writers)
        if self._watchdog is not None and not self._sending:
            self._watchdog.cancel()
            self._watchdog = None

    # --- producers: synchronous, never wait ----------------------------------------------------

    def send(self, client: Client, message: dict[str, Any]) -> bool:
        """Queue a message for one client; False if it is no longer taking messages."""
        text = encode(message)
        return self._offer(client, text, size_of(text))

    def send_to_user(self, user: str, message: dict[str, Any]) -> int:
        """Queue a message for every connected device of ``user``; returns how many took it."""
        devices = self._users.get(user)
        if not devices:
            return 0
        text = encode(message)
        size = size_of(text)
        return sum(self._offer(client, text, size) for client in list(devices))

    def broadcast(self, message: dict[str, Any]) -> int:
        text = encode(message)
        size = size_of(text)
        return sum(self._offer(client, text, size) for client in list(self._clients))

    # --- introspection -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def clients(self) -> list[Client]:
        return list(self._clients)

    def devices(self, user: str) -> list[Client]:
        return list(self._users.get(user, ()))

    def device_count(self, user: str) -> int:
        return len(self._users.get(user, ()))

    @property
    def queued_bytes(self) -> int:
        """Bytes in every client's queue, counted per reference."""
        return self._queued_bytes

    # --- internals -----------------------------------------------------------------------------

    def _offer(self, client: Client, text: str, nbytes: int) -> bool:
        if client._state is not _State.ACTIVE:
            return False
        queue = client._queue
        size = len(queue)
        if size and (
            size >= self._limit
            or client._queued_bytes + nbytes > self._limit_bytes
            or self._queued_bytes + nbytes > self._budget_bytes
        ):
            self._drop(client, DropReason.QUEUE_FULL)
            return False
        queue.append((text, nbytes))
        client._queued_bytes += nbytes
        self._queued_bytes += nbytes
        if size == 0:
            _wake(client)
        elif (size >= self._buffer or client._queued_bytes > self._buffer_bytes) and client._stall is None:
            client._stall = asyncio.get_running_loop().call_later(self._send_timeout, self._stalled, client)
        return True

    def _forget_queue(self, client: Client) -> None:
        self._queued_bytes -= client._queued_bytes
        client._queued_bytes = 0
        client._queue.clear()

    def _stalled(self, client: Client) -> None:
        client._stall = None
        self._drop(client, DropReason.QUEUE_FULL)

    def _drop(self, client: Client, reason: DropReason) -> None:
        if not self._remove(client, _State.DROPPED, reason):
            return
        self._metrics.ws_send_timeouts.inc()
        client._close = (CLOSE_SLOW_CLIENT, "too slow to receive: dropped")
        self._forget_queue(client)
        if client in self._sending:
            self._interrupt(client)  # end the send in progress now, not at its deadline
        log.warning("ws_client_dropped", user=client.user, device=client.device, reason=reason.value)

    def _remove(self, client: Client, state: _State, reason: DropReason) -> bool:
        """Take the client out of the hub exactly once; False if it was already out."""
        if client._state is not _State.ACTIVE:
            return False
        client._state = state
        client.reason = reason
        self._clients.pop(client, None)
        devices = self._users.get(client.user)
        if devices is not None:
            devices.pop(client, None)
            if not devices:
                del self._users[client.user]
                if self._presence is not None:
                    self._presence(client.user, False)
        self._metrics.ws_clients.set(len(self._clients))
        if client._stall is not None:
            client._stall.cancel()
            client._stall = None
        client.closed.set()
        _wake(client)
        return True

    def _interrupt(self, client: Client) -> None:
        """Cancel the writer's send in progress; the writer tells this from a cancellation of its own."""
        writer = client._writer
        # Never the writer itself: it drops its client after a timeout and must go on to the close.
        if not client._interrupted and writer is not None and writer is not asyncio.current_task():
            client._interrupted = True
            writer.cancel()

    def _check_sends(self) -> None:
        """The watchdog: interrupt every send past its deadline, then wait for the next deadline."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest: float | None = None
        for client, deadline in list(self._sending.items()):
            if deadline <= now:
                self._interrupt(client)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._watchdog = loop.call_at(earliest, self._check_sends)

    async def _write(self, client: Client) -> None:
        try:
            await self._pump(client)
            if client._close is not None:
                await self._send_close(client, *client._close)
        finally:
            self._remove(client, _State.GONE, DropReason.DISCONNECTED)
            self._forget_queue(client)  # whatever is left will never be sent: out of the budget

    async def _pump(self, client: Client) -> None:
        queue, sending = client._queue, self._sending
        loop = asyncio.get_running_loop()
        while True:
            state = client._state
            if state is _State.DROPPED or state is _State.GONE:
                self._forget_queue(client)
                return
            if not queue:
                if state is _State.CLOSING:
                    return
                client._waiter = loop.create_future()
                await client._waiter
                continue
            text, nbytes = queue.popleft()
            client._queued_bytes -= nbytes
            self._queued_bytes -= nbytes
            if client._stall is not None and len(queue) <= self._buffer and client._queued_bytes <= self._buffer_bytes:
                client._stall.cancel()  # the waiting messages are all in the queue now
                client._stall = None
            deadline = client._flush_deadline if state is _State.CLOSING else loop.time() + self._send_timeout
            sending[client] = deadline
            watchdog = self._watchdog
            if watchdog is None or watchdog.when() > deadline:
                if watchdog is not None:
                    watchdog.cancel()
                self._watchdog = loop.call_at(deadline, self._check_sends)
            try:
                await client.sink.send_text(text)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                # Ours only if nobody else cancelled the writer too (disconnect, loop shutdown).
                if not client._interrupted or (task is not None and task.uncancel() > 0):
                    raise
                client._interrupted = False
                if client._state is _State.ACTIVE:
                    self._drop(client, DropReason.SEND_TIMEOUT)
                return  # dropped, or the shutdown flush ran out of time: go on to the close frame
            except Exception as exc:  # the connection is gone; the endpoint's reader sees it too
                log.info("ws_send_failed", user=client.user, device=client.device, error=repr(exc))
                client._close = None
                self._remove(client, _State.GONE, DropReason.SEND_FAILED)
                return
            finally:
                del sending[client]

    async def _send_close(self, client: Client, code: int, reason: str) -> None:
        timeout = self._close_timeout if client._state is _State.DROPPED else self._send_timeout
        try:
            async with asyncio.timeout(timeout):
                await client.sink.close(code, reason)
        except TimeoutError:
            log.info("ws_close_timeout", user=client.user, device=client.device, code=code)
        except Exception as exc:  # already closed by the peer
            log.debug("ws_close_failed", user=client.user, device=client.device, error=repr(exc))
