"""Real processes for the operator tests: the ``media-operator`` command and media-service pods.

Every media process of a test listens on its own loopback address (127.0.0.2, 127.0.0.3, ...)
with the same admin port, as pods do on their own IPs; the operator is told that port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.kube_emulator import NAMESPACE, Cluster, eventually
from tests.support.media_process import FAST_LEAK_ENV, MediaProcess, start_media_service, stop_media_service
from tests.support.ports import free_port

OPERATOR = str(Path(sys.executable).parent / "media-operator")

#: Fast but still meaningful timings: several rounds fit in each window.
FAST_OPERATOR_ENV = {
    "MEDIA_OPERATOR_SCRAPE_INTERVAL": "0.3",
    "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "0.5",
    "MEDIA_OPERATOR_CONFIRM_SECONDS": "1.5",
    "MEDIA_OPERATOR_COOLDOWN_SECONDS": "0",
    "MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "600",
    "MEDIA_OPERATOR_DELETE_GRACE_SECONDS": "600",
    "MEDIA_OPERATOR_LOG_FORMAT": "json",
}


def port_free_on_all(hosts: list[str]) -> int:
    """A TCP port that is free on every one of ``hosts`` right now."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{self.url}/metrics", timeout=5)).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))), 0.0)

    async def wait_metric(self, name: str, predicate, timeout: float = 30.0, **labels: str) -> float:
        last: list[float] = []

        async def check() -> bool:
            last.append(await self.metric(name, **labels))
            return predicate(last[-1])

        try:
            await eventually(check, timeout=timeout, what=f"{name}{labels}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last value {last[-1:]}\n--- operator log ---\n{self.log()[-4000:]}") from None
        return last[-1]

    async def scrapes(self) -> float:
        return sum(v for (name, _), v in (await self.metrics()).items() if name == "media_operator_scrapes_total")

    async def rounds(self, count: int, pods: int, timeout: float = 30.0) -> None:
        """Wait until the operator has scraped every pod ``count`` more times."""
        target = await self.scrapes() + count * pods

        async def done() -> bool:
            return await self.scrapes() >= target

        await eventually(done, timeout=timeout, what=f"{count} more rounds")


async def start_operator(
    tmp_path: Path, cluster: Cluster, admin_port: int, env: Mapping[str, str] | None = None, pods: int | None = None
) -> OperatorProcess:
    port = free_port("127.0.0.1")
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MEDIA_OPERATOR_", "KUBERNETES_SERVICE"))},
        **FAST_OPERATOR_ENV,
        "KUBECONFIG": str(kubeconfig),
        # Warnings are errors in the operator process too (a deprecated kopf knob, an unclosed client).
        "PYTHONWARNINGS": "error",
        "MEDIA_OPERATOR_NAMESPACES": NAMESPACE,
        "MEDIA_OPERATOR_POD_ADMIN_PORT": str(admin_port),
        "MEDIA_OPERATOR_HTTP_HOST": "127.0.0.1",
        "MEDIA_OPERATOR_HTTP_PORT": str(port),
        **(env or {}),
    }
    log_path = tmp_path / f"operator-{port}.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.to_thread(
            subprocess.Popen, [OPERATOR], env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    op = OperatorProcess(proc, f"http://127.0.0.1:{port}", log_path)

    async def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"media-operator exited with {proc.returncode}:\n{op.log()}")
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{op.url}/healthz", timeout=1)).status_code == 200
        return False

    await eventually(up, timeout=60, what="media-operator /healthz")
    if pods is not None:  # the watch has delivered every pod
        await op.wait_metric("media_operator_pods_watched", lambda v: v == pods, timeout=60)
    return op


async def stop_operator(op: OperatorProcess, timeout: float = 30.0) -> int:
    """SIGTERM, as Kubernetes does; a clean stop exits 0 within the timeout."""
    if op.proc.poll() is None:
        op.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while op.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if op.proc.poll() is None:
            op.proc.kill()
            op.proc.wait()
            raise AssertionError(f"media-operator did not stop on SIGTERM within {timeout}s:\n{op.log()[-4000:]}")
    return op.proc.returncode


def fleet_hosts(count: int) -> list[str]:
    return [f"127.0.0.{i + 2}" for i in range(count)]


async def start_fleet(tmp_path: Path, count: int, spare: int = 0) -> tuple[list[MediaProcess], int]:
    """``count`` real media-service processes on 127.0.0.2.., sharing one admin port
    (also free on ``spare`` more addresses, for pods a test serves otherwise)."""
    hosts = fleet_hosts(count)
    admin_port = port_free_on_all(fleet_hosts(count + spare))
    public_port = port_free_on_all(hosts)
    env = {
        "MEDIA_FAULT_INJECTION": "1",
        **FAST_LEAK_ENV,
        "MEDIA_ADMIN_PORT": str(admin_port),
        "MEDIA_PORT": str(public_port),
    }
    started = await asyncio.gather(
        *(asyncio.to_thread(start_media, tmp_path, host, public_port, admin_port, env) for host in hosts),
        return_exceptions=True,
    )
    fleet = [m for m in started if isinstance(m, MediaProcess)]
    errors = [e for e in started if isinstance(e, BaseException)]
    if errors:
        await stop_fleet(fleet)
        raise errors[0]
    return fleet, admin_port


def start_media(tmp_path: Path, host: str, port: int, admin_port: int, env: dict[str, str]) -> MediaProcess:
    return start_media_service(tmp_path, host=host, port=port, admin_port=admin_port, env=env, ready_timeout=60)


async def stop_fleet(fleet: list[MediaProcess]) -> None:
    await asyncio.gather(*(asyncio.to_thread(stop_media_service, m) for m in fleet))


async def inject_leak(media: MediaProcess, tasks: int = 200) -> None:
    """Leak tasks once the service has its baseline, and wait for its gauge to say so."""
    await asyncio.to_thread(media.poll_metric, "media_goroutine_baseline", lambda v: v > 0, 20.0)
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{media.admin_url}/debug/leak", params={"tasks": tasks})
        assert response.status_code == 200, response.text
    await asyncio.to_thread(media.poll_metric, "media_potential_goroutine_leak", lambda v: v == 1, 20.0)


async def end_leak(media: MediaProcess) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.delete(f"{media.admin_url}/debug/leak")).status_code == 200
    await asyncio.to_thread(media.poll_metric, "media_potential_goroutine_leak", lambda v: v == 0, 20.0)
