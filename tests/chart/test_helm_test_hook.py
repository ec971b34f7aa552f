"""The `helm test` pod's script, run as rendered against the real service: it passes on a ready
service and fails once the service drains (readiness 503)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.chart import one, render
from tests.support.media_process import media_service


def hook_script(admin_host: str, admin_port: int) -> list[str]:
    pod = one(render({"metrics": {"service": {"port": admin_port}}}), "Pod")
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    script = command[2]
    assert "http://media-media-service-metrics:" in script
    # In the cluster the metrics Service name resolves to the pods; here it is the process.
    return [sys.executable, "-c", script.replace("media-media-service-metrics", admin_host)]


def test_hook_passes_on_ready_and_fails_on_draining(tmp_path: Path) -> None:
    with media_service(tmp_path, host="127.0.0.4") as media:
        command = hook_script(media.host, media.admin_port)
        ready = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout.split("\n")[:2] == ["/health 200", "/ready 200"]

        assert httpx.post(f"{media.admin_url}/admin/drain", timeout=5).status_code in (200, 202)
        draining = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert draining.returncode != 0
        assert "/health 200" in draining.stdout and "503" in draining.stderr
