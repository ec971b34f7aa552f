"""Run a real Alertmanager on a loopback port for tests, and ask amtool how it routes.

``alertmanager_server(tmp_path, config)`` starts the Debian ``prometheus-alertmanager`` binary
(``alertmanager`` elsewhere) with clustering off, waits until it is ready and stops it on exit.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.ports import free_port
from tests.support.prometheus import ALERTS_DIR
from tests.support.servers import ServerProcess, launch, wait_until
from tests.support.tools import require_tool

EXAMPLE_CONFIG = ALERTS_DIR / "alertmanager.example.yaml"


def amtool(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run amtool; the caller checks returncode and output."""
    return subprocess.run([require_tool("amtool"), *args], capture_output=True, text=True, timeout=timeout, check=False)


def route_receivers(config_path: Path, labels: Mapping[str, str]) -> list[str]:
    """Receivers the routing tree of ``config_path`` sends an alert with ``labels`` to."""
    result = amtool(
        "config", "routes", "test", f"--config.file={config_path}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout.strip().split(",")


def example_config(webhook_url: str, token_file: Path, wait: str = "100ms") -> dict[str, Any]:
    """alerts/alertmanager.example.yaml pointed at ``webhook_url`` (the operator's POST
    /alertmanager, or a test receiver) with the bearer token in ``token_file``, and its group
    waits shortened to ``wait`` so a test sees notifications at once. Routing is unchanged."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait=wait, group_interval=wait)
    (receiver,) = [r for r in config["receivers"] if r["name"] == "media-operator"]
    (webhook,) = receiver["webhook_configs"]
    webhook["url"] = webhook_url
    webhook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    return config


@dataclass
class AlertmanagerServer(ServerProcess):
    config_path: Path

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Send alerts as Prometheus does (API v2)."""
        response = httpx.post(f"{self.url}/api/v2/alerts", json=list(alerts), timeout=5)
        assert response.status_code == 200, response.text

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds whose labels include ``labels``."""
        response = httpx.get(f"{self.url}/api/v2/alerts", timeout=5)
        response.raise_for_status()
        return [a for a in response.json() if all(a["labels"].get(k) == v for k, v in labels.items())]

    def wait_for_alert(self, timeout: float = 30.0, **labels: str) -> list[dict[str, Any]]:
        return wait_until(lambda: self.alerts(**labels), timeout, f"alert {labels} in alertmanager")

    def amtool(self, *args: str) -> subprocess.CompletedProcess[str]:
        """amtool against this server (e.g. ``alert query``)."""
        return amtool(*args, f"--alertmanager.url={self.url}")


def alert(
    labels: Mapping[str, str], annotations: Mapping[str, str] | None = None, resolved: bool = False
) -> dict[str, Any]:
    """An alert in the API v2 shape; ``resolved`` sets its end in the past."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
    }
    if resolved:
        body["endsAt"] = (now - timedelta(seconds=1)).isoformat()
    return body


def start_alertmanager(
    workdir: Path,
    config: Mapping[str, Any] | str,
    host: str = "127.0.0.1",
    ready_timeout: float = 30.0,
) -> AlertmanagerServer:
    """Start Alertmanager with ``config`` (a dict or YAML text); returns once it is ready."""
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(config if isinstance(config, str) else yaml.safe_dump(dict(config)))
    port = free_port(host)
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={host}:{port}",
        # An empty address turns the gossip cluster off: no second port, no peers.
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return launch(
        AlertmanagerServer,
        "alertmanager",
        argv,
        f"http://{host}:{port}",
        workdir,
        ready_timeout,
        config_path=config_path,
    )


@contextlib.contextmanager
def alertmanager_server(workdir: Path, config: Mapping[str, Any] | str, **kwargs: Any) -> Iterator[AlertmanagerServer]:
    server = start_alertmanager(workdir, config, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Notification:
    headers: dict[str, str]
    body: dict[str, Any]


class WebhookReceiver:
    """An HTTP endpoint on loopback that records Alertmanager webhook notifications."""

    def __init__(self, host: str = "127.0.0.1", path: str = "/alertmanager") -> None:
        import http.server
        import json
        import threading

        self.notifications: list[Notification] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._changed:
                    receiver.notifications.append(
                        Notification(headers={k.lower(): v for k, v in self.headers.items()}, body=body)
                    )
                    receiver._changed.notify_all()
                self.send_response(200 if self.path == path else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Notification:
        """The first notification for which ``predicate(notification)`` holds, waiting up to ``timeout``."""
        import time

        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for notification in self.notifications:
                    if predicate(notification):
                        return notification
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no matching notification within {timeout}s; got {[n.body for n in self.notifications]}"
                    )
                self._changed.wait(remaining)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def notification(
    pod: str,
    fingerprint: str,
    status: str = "firing",
    name: str = "MediaServiceGoroutineLeak",
    starts_at: str = "2026-11-24T01:00:00Z",
) -> dict:
    labels = {"alertname": name, "namespace": "media", "pod": pod, "severity": "warning"}
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{name}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "media-operator",
        "groupLabels": {"alertname": name},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.monitoring:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "task leak"},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus/graph",
                "fingerprint": fingerprint,
            }
        ],
    }
