"""Server binaries the tests run for real (Prometheus, Alertmanager): start on a loopback port
with a log in their work folder, wait until ``/-/ready`` answers, stop with SIGTERM then SIGKILL."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
S = TypeVar("S", bound="ServerProcess")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")
        time.sleep(every)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@dataclass
class ServerProcess:
    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        terminate(self.proc, timeout)


def launch(
    kind: type[S], name: str, argv: Sequence[str], url: str, workdir: Path, ready_timeout: float, **fields: Any
) -> S:
    """Start ``argv`` in ``workdir`` and return ``kind(...)`` once ``url/-/ready`` answers 200."""
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = kind(url=url, proc=proc, workdir=workdir, log_path=log_path, **fields)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{server.log()}")
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200

    try:
        wait_until(ready, ready_timeout, f"{name} /-/ready")
    except BaseException:
        server.stop()
        raise
    return server
