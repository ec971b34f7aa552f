"""Fixtures of the operator tests: the emulated cluster, real media pods, the real operator."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.kube_emulator import Cluster, cluster
from tests.support.media_process import MediaProcess
from tests.support.operator_harness import OperatorProcess, start_fleet, start_operator, stop_fleet, stop_operator


def _open_fds() -> dict[str, str]:
    """Sockets of this process: what an unclosed HTTP client or server leaves behind."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found[fd] = target
    return found


@pytest.fixture
async def k8s() -> AsyncIterator[Cluster]:
    fds = _open_fds()
    async with cluster() as state:
        yield state
    # The emulator's server, its client and every HTTP client of the test are closed by now.
    leaked = {fd: t for fd, t in _open_fds().items() if fds.get(fd) != t}
    assert not leaked, f"sockets leaked by the emulator or the test's clients: {leaked}"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[list[MediaProcess], int]]]]:
    started: list[MediaProcess] = []

    async def make(count: int, spare: int = 0) -> tuple[list[MediaProcess], int]:
        media, port = await start_fleet(tmp_path, count, spare)
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
