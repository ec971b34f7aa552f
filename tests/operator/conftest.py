"""Fixtures of the operator tests: the emulated cluster, real media pods, the real operator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.operator.emulator import Cluster, cluster
from tests.operator.harness import OperatorProcess, start_fleet, start_operator, stop_fleet, stop_operator
from tests.support.media_process import MediaProcess


def _open_fds() -> int:
    """Sockets and pipes of this process (lazily created singletons like epoll are not leaks)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(("socket:", "pipe:"))
    return count


@pytest.fixture
async def k8s() -> AsyncIterator[Cluster]:
    fds = _open_fds()
    async with cluster() as state:
        yield state
    # The emulator's server, its client and every HTTP client of the test are closed by now.
    assert _open_fds() <= fds, "file descriptors leaked by the emulator or the test's clients"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[tuple[list[MediaProcess], int]]]]:
    started: list[MediaProcess] = []

    async def make(count: int) -> tuple[list[MediaProcess], int]:
        media, port = await start_fleet(tmp_path, count)
        started.extend(media)
        return media, port

    yield make
    await stop_fleet(started)
    assert all(m.proc.returncode is not None for m in started)


@pytest.fixture
async def operator(tmp_path: Path, k8s: Cluster) -> AsyncIterator[Callable[..., Awaitable[OperatorProcess]]]:
    """Start the real ``media-operator`` command against the emulator; each must stop cleanly."""
    running: list[OperatorProcess] = []

    async def make(admin_port: int, env: dict[str, str] | None = None, pods: int | None = None) -> OperatorProcess:
        op = await start_operator(tmp_path, k8s, admin_port, env, pods)
        running.append(op)
        return op

    yield make
    codes = [await stop_operator(op) for op in running]
    assert codes == [0] * len(codes), [op.log()[-3000:] for op in running]
