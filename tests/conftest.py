"""Suite-wide fixtures: loopback-only ICE, leak checks, and tool requirements."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aioice.ice
import pytest

from media_service.ice import restrict_host_addresses

ORIGINAL_VALIDATE = aioice.ice.validate_remote_candidate


@pytest.fixture(scope="session", autouse=True)
def loopback_ice() -> None:
    """The test process's own aiortc peers offer only 127.0.0.1: media stays on loopback. Should a
    test build a SessionManager in this process, its remote-address policy (process-wide in aioice)
    would apply to these peers too: it is undone after each test (``remote_addresses_unrestricted``)."""
    restrict_host_addresses(["127.0.0.1"])


@pytest.fixture(autouse=True)
def remote_addresses_unrestricted() -> Iterator[None]:
    yield
    aioice.ice.validate_remote_candidate = ORIGINAL_VALIDATE


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_threads() -> int:
    """Threads, less the event loop's default-executor workers ("asyncio_N"): getaddrinfo starts
    them, the executor reuses them, and they end when pytest-asyncio closes the loop."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fails the test if it leaves tasks, threads or file descriptors behind.

    pytest-asyncio cancels leftover tasks silently, so without this a leak would pass unseen.
    Threads and descriptors are given a few seconds to wind down (aiortc closes asynchronously).
    """
    current = asyncio.current_task()
    tasks_before = {t for t in asyncio.all_tasks() if t is not current}
    threads_before, fds_before = live_threads(), open_fds()
    yield
    deadline = time.monotonic() + 10
    while True:
        tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()} - tasks_before
        threads, fds = live_threads(), open_fds()
        if not tasks and threads <= threads_before and fds <= fds_before:
            return
        if time.monotonic() > deadline:
            names = sorted(t.get_coro().__qualname__ for t in tasks)
            thread_names = [t.name for t in threading.enumerate()]
            pytest.fail(
                f"leaked: tasks {names}, threads {threads_before}->{threads} {thread_names}, fds {fds_before}->{fds}"
            )
        await asyncio.sleep(0.05)
