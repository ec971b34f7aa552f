"""Every test here must leave no task, thread or file descriptor behind."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from media_service.leak.ownership import TaskOwnership


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(autouse=True)
def no_thread_or_fd_leak() -> Iterator[None]:
    threads, fds = set(threading.enumerate()), _fds()
    yield
    assert _wait_for(lambda: set(threading.enumerate()) <= threads), (
        f"threads left behind: {set(threading.enumerate()) - threads}"
    )
    assert _wait_for(lambda: _fds() <= fds), f"file descriptors left behind: {_fds() - fds}"


@pytest.fixture
async def no_task_leak() -> AsyncIterator[None]:
    yield
    # Cancelled tasks need a few loop turns to finish; poll with a deadline.
    deadline = time.monotonic() + 5.0
    while (stray := asyncio.all_tasks() - {asyncio.current_task()}) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not stray, f"tasks left behind: {stray}"


@pytest.fixture
async def ownership(no_task_leak: None) -> AsyncIterator[TaskOwnership]:
    """Task ownership installed on the test's loop, and taken off again."""
    owned = TaskOwnership()
    loop = asyncio.get_running_loop()
    owned.install(loop)
    yield owned
    owned.uninstall(loop)
    assert loop.get_task_factory() is None
