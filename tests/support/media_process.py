"""Start the real media-service process on loopback ports, and stop it.

Every integration test (service, operator, alerting path) uses this one helper, so that all of
them run the same command a user runs: ``python -m media_service`` under uvicorn. Like a real
deployment, every process verifies access tokens: it gets a secret file, and clients mint their
tokens with ``token()`` (tests of ``MEDIA_AUTH=none`` say so in their env).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from media_service.auth import Grants, mint
from tests.support.ports import free_port

#: The HMAC secret of this test run: every media process verifies with it, every client mints with it.
TEST_SECRET = secrets.token_hex(32).encode()  # text: the service strips whitespace from the file


def token(user: str = "alice", ttl: float = 3600, *, grants: Grants | None = None, secret: bytes = TEST_SECRET) -> str:
    """An access token for ``user``, as ``media-service token`` would print it."""
    return mint(secret, user, ttl, grants=grants)


def auth_header(user: str = "alice", **kwargs: Any) -> dict[str, str]:
    """``Authorization: Bearer`` for ``user``: what WHIP clients and non-browser WebSockets send."""
    return {"Authorization": f"Bearer {token(user, **kwargs)}"}


def access_query(user: str = "alice", **kwargs: Any) -> str:
    """The ``access_token`` query parameter for ``user``, as browsers send it."""
    return f"access_token={token(user, **kwargs)}"


#: Settings that make leak detection observable within a test's time.
FAST_LEAK_ENV = {
    "MEDIA_LEAK_SAMPLE_INTERVAL": "0.2",
    "MEDIA_LEAK_BASELINE_SAMPLES": "3",
    "MEDIA_LEAK_ORPHAN_GRACE": "0.5",
}


@dataclass
class MediaProcess:
    host: str
    port: int
    admin_port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """Read one sample from the admin /metrics endpoint (None if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.admin_url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and (
                    labels is None or all(sample.labels.get(k) == v for k, v in labels.items())
                ):
                    return sample.value
        return None

    def poll_metric(self, name: str, predicate, timeout: float = 20.0, labels=None) -> float:
        """Poll a metric until ``predicate(value)`` holds; fail with the last value otherwise."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.metric(name, labels)
            if value is not None and predicate(value):
                return value
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels or ''} stayed at {value} for {timeout}s\n{self.log()[-3000:]}")


def start_media_service(
    tmp_path: Path,
    *,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    port: int | None = None,
    admin_port: int | None = None,
    ready_timeout: float = 30.0,
    wrap: list[str] | None = None,
) -> MediaProcess:
    """Start ``python -m media_service`` and wait until ``/ready`` answers 200. Ports are free ones
    of ``host`` unless given (pods of one test share an admin port, each on its own address).
    ``wrap`` prefixes the command (``ip netns exec NS`` runs it in a network namespace)."""
    port = port or free_port(host)
    admin_port = admin_port or free_port(host)
    full_env = {
        **os.environ,
        "MEDIA_HOST": host,
        "MEDIA_PORT": str(port),
        "MEDIA_ADMIN_HOST": host,
        "MEDIA_ADMIN_PORT": str(admin_port),
        "MEDIA_LOG_FORMAT": "json",
        "MEDIA_ICE_HOST_ADDRESSES": "127.0.0.1",  # media stays on loopback
        "MEDIA_ICE_ALLOW_LOOPBACK": "1",  # ...which a real deployment refuses to send checks to
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if "MEDIA_AUTH_SECRET_FILE" not in full_env:
        secret_file = tmp_path / "media-auth-secret"
        secret_file.write_bytes(TEST_SECRET)
        full_env["MEDIA_AUTH_SECRET_FILE"] = str(secret_file)
    log_path = tmp_path / f"media-{host}-{port}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [*(wrap or []), sys.executable, "-m", "media_service", *(args or [])],
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    media = MediaProcess(host, port, admin_port, proc, log_path, env or {})
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"media-service exited with {proc.returncode}:\n{media.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{media.admin_url}/ready", timeout=1).status_code == 200:
                return media
        time.sleep(0.05)
    stop_media_service(media)
    raise RuntimeError(f"media-service not ready within {ready_timeout}s:\n{media.log()}")


def stop_media_service(media: MediaProcess, timeout: float = 40.0) -> int:
    """SIGTERM, then SIGKILL if the drain does not finish in ``timeout``."""
    if media.proc.poll() is None:
        media.proc.send_signal(signal.SIGTERM)
        try:
            media.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            media.proc.kill()
            media.proc.wait()
    return media.proc.returncode


@contextlib.contextmanager
def media_service(tmp_path: Path, **kwargs) -> Iterator[MediaProcess]:
    media = start_media_service(tmp_path, **kwargs)
    try:
        yield media
    finally:
        stop_media_service(media)


@contextlib.asynccontextmanager
async def media_service_async(tmp_path: Path, **kwargs) -> AsyncIterator[MediaProcess]:
    """The same, without blocking the running event loop while the process starts and stops."""
    media = await asyncio.to_thread(start_media_service, tmp_path, **kwargs)
    try:
        yield media
    finally:
        await asyncio.to_thread(stop_media_service, media)
