"""HTTP calls to the media pods' admin port: scrape /metrics, read /debug/tasks, POST /admin/drain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from media_operator.model import PodKey, Reading
from media_operator.promtext import Unparseable, parse_reading

#: The most a pod's /metrics may send (a service pod's is tens of KB): a pod that sent 200 MB took
#: the operator to 612 MB against its 256 Mi limit, and with it every pod's protection.
MAX_METRICS_BYTES = 4 * 1024 * 1024
#: The most a pod's /debug/tasks may send; only its first groups are read.
MAX_TASKS_BYTES = 1024 * 1024


class TooLarge(ValueError):
    pass


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or TooLarge as soon as it is known to exceed ``limit`` (never more is read)."""
    declared = response.content_length
    if declared is not None and declared > limit:
        raise TooLarge(f"body of {declared} bytes is over {limit}")
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body over {limit} bytes")
    return bytes(body)


@dataclass(frozen=True)
class Scraped:
    reading: Reading
    result: str  # ok | error | unparseable (the label of media_operator_scrapes_total)


def summarize_tasks(dump: Any, top: int = 3) -> str:
    """``1000× media_service.leak.faults.injected_leak (none), ...`` from a /debug/tasks dump.

    The dump is whatever JSON the pod sent: anything but an object gives no summary, never an error."""
    if not isinstance(dump, Mapping):
        return "task dump is not a JSON object"
    groups = dump.get("groups")
    if not isinstance(groups, list):
        return "task dump has no groups"
    parts = []
    for group in groups[:top]:
        if isinstance(group, Mapping):
            parts.append(f"{group.get('count', '?')}× {group.get('coroutine', '?')} ({group.get('owner', '?')})")
    return ", ".join(parts) or "no tasks"


class PodClient:
    """One connection pool for every pod; concurrency and time bounded."""

    def __init__(self, port: int, *, timeout: float, concurrency: int) -> None:
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = concurrency

    async def __aenter__(self) -> Self:
        # Keep-alive to a bounded number of pods; the pool never grows beyond the concurrency.
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=2, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"User-Agent": "media-operator"}
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("PodClient is not entered")
        return self._session

    def _url(self, ip: str, path: str) -> str:
        host = f"[{ip}]" if ":" in ip else ip  # IPv6 pod IPs
        return f"http://{host}:{self._port}{path}"

    async def scrape(self, ip: str | None) -> Scraped:
        if not ip:
            return Scraped(Reading(leak=None, error="pod has no IP yet"), "error")
        async with self._limit:
            try:
                async with self.session.get(self._url(ip, "/metrics")) as response:
                    if response.status != 200:
                        return Scraped(Reading(leak=None, error=f"HTTP {response.status}"), "error")
                    text = (await read_capped(response, MAX_METRICS_BYTES)).decode()
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # TooLarge, UnicodeDecodeError
                return Scraped(Reading(leak=None, error=f"{type(exc).__name__}: {exc}"[:200]), "error")
        try:
            return Scraped(parse_reading(text), "ok")
        except Unparseable as exc:
            return Scraped(Reading(leak=None, error=str(exc)), "unparseable")

    async def scrape_all(self, pods: Iterable[tuple[PodKey, str | None]]) -> dict[PodKey, Scraped]:
        pods = list(pods)
        results = await asyncio.gather(*(self.scrape(ip) for _, ip in pods))
        return {key: result for (key, _), result in zip(pods, results, strict=False)}

    async def top_tasks(self, ip: str) -> str:
        """Best effort: the quarantine must not wait on or fail for a pod's debug endpoint."""
        try:
            async with self.session.get(self._url(ip, "/debug/tasks")) as response:
                if response.status != 200:
                    return f"/debug/tasks answered HTTP {response.status}"
                return summarize_tasks(json.loads(await read_capped(response, MAX_TASKS_BYTES)))
        except (TimeoutError, aiohttp.ClientError, ValueError, RecursionError) as exc:
            return f"/debug/tasks unreadable ({type(exc).__name__})"

    async def drain(self, ip: str) -> bool:
        try:
            async with self.session.post(self._url(ip, "/admin/drain")) as response:
                return response.status < 300
        except (TimeoutError, aiohttp.ClientError):
            return False
