"""The bus between replicas: messages for users whose devices are on other replicas, and which
replica holds a WHIP session.

Without Redis (``MEDIA_REDIS_URL`` unset) the process is alone: ``LocalBus`` reaches no other
replica and knows no other owner. With Redis, ``RedisBus``:

* Presence without polling. A replica SUBSCRIBEs to the channel of every user with a device
  connected to it (``media:user:<user>``). A message for a user goes to the local devices at once
  and is PUBLISHed; PUBLISH's receiver count, less this replica's own subscription, is how many
  other replicas hold a device of the user. None anywhere: ``not_online``.
* Session owners. The replica of a WHIP session records ``media:whip:<id>`` = its public URL with a
  TTL, refreshed while the session lives and deleted when it ends; another replica forwards the
  session's later requests there, and only there.
* Redis trouble never reaches local sessions or local delivery. Every call has a deadline and the
  connection pool is bounded; a send that cannot be published raises ``BusUnavailable`` (the caller
  answers ``unavailable``). One supervisor task reconnects with backoff and, once connected,
  rebuilds what this replica registered: its subscriptions and its session owners.

Pub/sub is at most once: a replica that is disconnected while a message is published misses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from media_common import logs
from media_service.hub import encode
from media_service.metrics import ServiceMetrics

log = logs.get("media_service.bus")

USER_CHANNEL = "media:user:"
#: This replica's own channel: subscribed from the first moment, so the subscriber connection exists
#: (and a dead Redis shows on it) before any user connects.
REPLICA_CHANNEL = "media:replica:"
SESSION_KEY = "media:whip:"
#: Deadline of one Redis call: the bus must never hold a sender, a request or the loop for long.
CALL_TIMEOUT = 1.0
#: How often a connected replica checks that Redis still answers (a hung server sends no error).
PING_INTERVAL = 1.0
#: Reconnection backoff, doubled from the first to the last, with jitter.
BACKOFF = (0.1, 5.0)
#: A connection that lasted this long was a working one: the next loss starts the backoff afresh.
STABLE_SECONDS = 10.0
#: Connections to Redis per replica: publishers beyond it wait (up to CALL_TIMEOUT), never queue without bound.
MAX_CONNECTIONS = 32
#: Owner records live this long unless refreshed (at a third of it); a crashed replica's expire.
OWNER_TTL = 60
#: Keys per command when (re)registering many subscriptions or owners at once.
BATCH = 500


class BusUnavailable(Exception):
    """Redis cannot be reached now: the request is retryable."""


Deliver = Callable[[str, dict[str, Any]], int]


class Bus(Protocol):
    @property
    def up(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def user_online(self, user: str) -> None: ...

    def user_offline(self, user: str) -> None: ...

    async def publish(self, user: str, message: dict[str, Any]) -> int:
        """Hand ``message`` to the other replicas holding a device of ``user``; how many took it."""
        ...

    async def claim(self, session_id: str) -> None:
        """Record this replica as the owner of a WHIP session (best effort: never raises)."""
        ...

    def release(self, session_id: str) -> None: ...

    async def owner(self, session_id: str) -> str | None:
        """The public URL of the replica holding ``session_id``; None if none is recorded."""
        ...


class LocalBus:
    """One process: nothing to reach, nobody else to ask."""

    up = True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def user_online(self, user: str) -> None:
        pass

    def user_offline(self, user: str) -> None:
        pass

    async def publish(self, user: str, message: dict[str, Any]) -> int:
        return 0

    async def claim(self, session_id: str) -> None:
        pass

    def release(self, session_id: str) -> None:
        pass

    async def owner(self, session_id: str) -> str | None:
        return None


class RedisBus:
    def __init__(
        self,
        url: str,
        public_url: str,
        metrics: ServiceMetrics,
        deliver: Deliver,
        *,
        password: str | None = None,
        owner_ttl: int = OWNER_TTL,
    ) -> None:
        self.id = secrets.token_hex(8)  # tells this replica's own publications apart
        self.public_url = public_url
        self._metrics = metrics
        self._deliver = deliver
        self._owner_ttl = owner_ttl
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            url,
            password=password,
            max_connections=MAX_CONNECTIONS,
            timeout=CALL_TIMEOUT,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # the supervisor reconnects; a call fails fast instead
        )
        self._client: Redis | None = None  # set while connected
        self._users: set[str] = set()  # users with a device here: what we want to be subscribed to
        self._requested: set[str] = set()  # subscriptions sent on the current connection
        self._confirmed: set[str] = set()  # subscriptions Redis has confirmed (PUBLISH counts them)
        self._owned: set[str] = set()  # WHIP sessions held here
        self._released: dict[str, float] = {}  # ended sessions whose record is still to delete
        self._subscriptions_changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ever_up = self._down_logged = False
        self._up_since: float | None = None  # set while a connection is up, until the supervisor notes its loss
        metrics.bus_up.set(0)

    @property
    def up(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="bus-supervisor")

    async def stop(self) -> None:
        client = self._client
        if client is not None:  # last words: this replica's owner records go now, not at their TTL
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await self._delete_owners(client, [*self._owned, *self._released])
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pool.aclose()

    # --- presence ------------------------------------------------------------------------------

    def user_online(self, user: str) -> None:
        self._users.add(user)
        self._subscriptions_changed.set()

    def user_offline(self, user: str) -> None:
        self._users.discard(user)
        self._subscriptions_changed.set()

    async def publish(self, user: str, message: dict[str, Any]) -> int:
        client = self._client
        if client is None:
            self._metrics.bus_messages.labels(direction="out", result="error").inc()
            raise BusUnavailable("the bus between replicas is down")
        # As the hub writes it: UTF-8 rather than \u escapes (3x for non-ASCII), lone surrogates escaped.
        payload = encode({"from": self.id, "message": message})
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                receivers: int = await client.publish(USER_CHANNEL + user, payload)
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.bus_messages.labels(direction="out", result="error").inc()
            self._wake.set()  # let the keeper find out at once whether Redis is gone
            raise BusUnavailable(f"the bus between replicas did not take the message ({type(exc).__name__})") from None
        self._metrics.bus_messages.labels(direction="out", result="ok").inc()
        return max(0, receivers - (1 if user in self._confirmed else 0))

    # --- session owners ------------------------------------------------------------------------

    async def claim(self, session_id: str) -> None:
        self._owned.add(session_id)
        client = self._client
        if client is None:
            return  # recorded when the bus is back
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.set(SESSION_KEY + session_id, self.public_url, ex=self._owner_ttl)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("bus_claim_failed", session=session_id, error=type(exc).__name__)

    def release(self, session_id: str) -> None:
        if session_id in self._owned:
            self._owned.discard(session_id)
            self._released[session_id] = time.monotonic()
            self._wake.set()

    async def owner(self, session_id: str) -> str | None:
        client = self._client
        if client is None:
            raise BusUnavailable("the bus between replicas is down")
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                value = await client.get(SESSION_KEY + session_id)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BusUnavailable(f"cannot look the session up ({type(exc).__name__})") from None
        return value.decode() if isinstance(value, bytes) else value

    # --- the connection ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                await self._connected()
            except Exception as exc:  # whatever broke the connection: it is down until it is back
                self._set_down(exc)
            # A connection that held a while starts the backoff afresh; one that keeps failing backs off.
            held = self._up_since is not None and time.monotonic() - self._up_since >= STABLE_SECONDS
            delay = BACKOFF[0] if held else min(delay * 2, BACKOFF[1])
            self._up_since = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    async def _connected(self) -> None:
        """Serve one connection until it fails: it only ends by raising."""
        # Connections pooled before a loss may point at a Redis that is gone: start from none.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._pool.disconnect()
        client = Redis(connection_pool=self._pool)
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.ping()
            self._requested.clear()
            self._confirmed.clear()
            self._metrics.bus_subscriptions.set(0)
            async with asyncio.timeout(CALL_TIMEOUT):
                await pubsub.subscribe(REPLICA_CHANNEL + self.id)
            await self._subscribe(pubsub)
            await self._refresh_owners(client)
            self._set_up(client)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(pubsub), name="bus-reader")
                tasks.create_task(self._follow_presence(pubsub), name="bus-presence")
                tasks.create_task(self._keep(client), name="bus-keeper")
            raise ConnectionError("the bus tasks ended")
        finally:
            self._client = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CALL_TIMEOUT):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _set_up(self, client: Redis) -> None:
        self._client = client
        self._metrics.bus_up.set(1)
        if self._ever_up:
            self._metrics.bus_reconnects.inc()
        self._ever_up = True
        self._down_logged = False
        self._up_since = time.monotonic()
        log.info("bus_connected", users=len(self._users), sessions=len(self._owned))

    def _set_down(self, exc: BaseException) -> None:
        """Mark the bus down, with one log line per change of state (not one per failed retry)."""
        was_up = self._up_since is not None
        self._client = None
        self._metrics.bus_up.set(0)
        if was_up or not self._down_logged:
            self._down_logged = True
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # the task that failed first
                exc = exc.exceptions[0]
            log.warning("bus_disconnected", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _read(self, pubsub: PubSub) -> None:
        """Deliver what other replicas publish for users with a device here."""
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=PING_INTERVAL)
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if not name.startswith(USER_CHANNEL):
                continue
            user = name.removeprefix(USER_CHANNEL)
            if kind == "subscribe":
                self._confirmed.add(user)
                self._metrics.bus_subscriptions.set(len(self._confirmed))
            elif kind == "unsubscribe":
                self._confirmed.discard(user)
                self._metrics.bus_subscriptions.set(len(self._confirmed))
            elif kind == "message":
                self._receive(user, message["data"])

    def _receive(self, user: str, data: bytes | str) -> None:
        try:
            envelope = json.loads(data)
            origin, relayed = envelope["from"], envelope["message"]
        except (ValueError, TypeError, KeyError):
            self._metrics.bus_messages.labels(direction="in", result="error").inc()
            return
        if origin == self.id or not isinstance(relayed, dict):
            self._metrics.bus_messages.labels(direction="in", result="ignored").inc()
            return
        delivered = self._deliver(user, relayed)
        self._metrics.bus_messages.labels(direction="in", result="ok" if delivered else "ignored").inc()

    async def _follow_presence(self, pubsub: PubSub) -> None:
        while True:
            await self._subscriptions_changed.wait()
            self._subscriptions_changed.clear()
            await self._subscribe(pubsub)

    async def _subscribe(self, pubsub: PubSub) -> None:
        """Bring the subscriptions of this connection in line with the users that have a device here."""
        wanted = set(self._users)
        added, removed = sorted(wanted - self._requested), sorted(self._requested - wanted)
        for start in range(0, len(added), BATCH):
            batch = added[start : start + BATCH]
            async with asyncio.timeout(CALL_TIMEOUT):
                await pubsub.subscribe(*(USER_CHANNEL + user for user in batch))
            self._requested.update(batch)
        for start in range(0, len(removed), BATCH):
            batch = removed[start : start + BATCH]
            async with asyncio.timeout(CALL_TIMEOUT):
                await pubsub.unsubscribe(*(USER_CHANNEL + user for user in batch))
            self._requested.difference_update(batch)

    async def _keep(self, client: Redis) -> None:
        """Check Redis answers, refresh the owner records, delete those of ended sessions."""
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + self._owner_ttl / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_INTERVAL):
                    await self._wake.wait()
            self._wake.clear()
            async with asyncio.timeout(CALL_TIMEOUT):
                await client.ping()
            if self._released:
                await self._flush_released(client)
            if loop.time() >= refresh_at:
                await self._refresh_owners(client)
                refresh_at = loop.time() + self._owner_ttl / 3

    async def _refresh_owners(self, client: Redis) -> None:
        owned = sorted(self._owned)
        for start in range(0, len(owned), BATCH):
            async with asyncio.timeout(CALL_TIMEOUT):
                pipe = client.pipeline(transaction=False)
                for session_id in owned[start : start + BATCH]:
                    pipe.set(SESSION_KEY + session_id, self.public_url, ex=self._owner_ttl)
                await pipe.execute()
        if self._released:
            await self._flush_released(client)

    async def _flush_released(self, client: Redis) -> None:
        # Records older than their TTL are gone already; the rest are deleted now.
        horizon = time.monotonic() - self._owner_ttl
        ended = [sid for sid, at in self._released.items() if at > horizon]
        async with asyncio.timeout(CALL_TIMEOUT):
            await self._delete_owners(client, ended)
        for session_id in ended:
            self._released.pop(session_id, None)
        for session_id in [sid for sid, at in self._released.items() if at <= horizon]:
            del self._released[session_id]

    @staticmethod
    async def _delete_owners(client: Redis, session_ids: list[str]) -> None:
        for start in range(0, len(session_ids), BATCH):
            await client.delete(*(SESSION_KEY + sid for sid in session_ids[start : start + BATCH]))


def read_password(path: str) -> str | None:
    """The Redis password from MEDIA_REDIS_PASSWORD_FILE (empty path: none, or the one in the URL)."""
    return Path(path).read_text().strip() or None if path else None
