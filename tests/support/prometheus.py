"""Run a real Prometheus on a loopback port for tests, and make the fast test variant of the rules.

``prometheus_server(tmp_path, scrape_configs=..., rule_files=...)`` starts the Debian
``prometheus`` binary with a generated config in its own directory, waits until it is ready and
stops it on exit. ``fast_rules`` rewrites the rule files of ``alerts/`` with a short ``for`` and
evaluation interval, so a test sees an alert fire in seconds from the very rules production uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.ports import free_port
from tests.support.servers import ServerProcess, launch, wait_until
from tests.support.tools import require_tool

__all__ = ["require_tool", "wait_until"]  # imported from here by the alert and chart tests

REPO = Path(__file__).resolve().parents[2]
ALERTS_DIR = REPO / "alerts"
TOOLS_BIN = REPO / ".tools" / "bin"


def rule_files(alerts_dir: Path = ALERTS_DIR) -> list[Path]:
    """The production rule files, in a stable order."""
    return sorted(alerts_dir.glob("*.rules.yaml"))


def fast_rules(
    dst_dir: Path,
    for_: str = "2s",
    interval: str = "1s",
    sources: Sequence[Path] | None = None,
) -> list[Path]:
    """Write the test variant of the rule files into ``dst_dir`` and return their paths.

    Every group is evaluated every ``interval`` and every alert with a ``for`` waits ``for_``
    instead. Expressions, labels and annotations stay exactly those of ``alerts/``.
    """
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources if sources is not None else rule_files():
        doc = yaml.safe_load(src.read_text())
        for group in doc["groups"]:
            group["interval"] = interval
            for rule in group["rules"]:
                if "alert" in rule and "for" in rule:
                    rule["for"] = for_
        dst = dst_dir / src.name
        dst.write_text(yaml.safe_dump(doc, sort_keys=False))
        written.append(dst)
    return written


@dataclass
class PrometheusServer(ServerProcess):
    def _api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector as returned by the HTTP API."""
        data = self._api("query", query=expr)
        return data["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._api("targets")["activeTargets"]

    def alerts(self, name: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Alerts Prometheus holds (pending or firing), optionally filtered."""
        return [
            alert
            for alert in self._api("alerts")["alerts"]
            if (name is None or alert["labels"].get("alertname") == name) and (state is None or alert["state"] == state)
        ]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self._api("rules")["groups"]

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 30.0) -> list[dict[str, Any]]:
        return wait_until(lambda: self.alerts(name, state), timeout, f"alert {name} {state}")

    def wait_for_query(
        self, expr: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            result = self.query(expr)
            return result if predicate(result) else None

        return wait_until(probe, timeout, f"query {expr!r} to match")


def static_job(job_name: str, address: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A scrape job for one target; ``labels`` stand in for what Kubernetes discovery adds
    (``namespace``, ``pod``), which the alert routing groups by."""
    return {"job_name": job_name, "static_configs": [{"targets": [address], "labels": dict(labels or {})}]}


def prometheus_config(
    scrape_configs: Sequence[dict[str, Any]],
    rule_paths: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> dict[str, Any]:
    config: dict[str, Any] = {
        # A scrape may take the whole interval, never more (Prometheus refuses timeout > interval).
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(p) for p in rule_paths],
        "scrape_configs": list(scrape_configs),
    }
    if alertmanager_urls:
        hosts = [u.split("://", 1)[-1].rstrip("/") for u in alertmanager_urls]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": hosts}]}]}
    return config


def start_prometheus(
    workdir: Path,
    scrape_configs: Sequence[dict[str, Any]] = (),
    rule_paths: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    host: str = "127.0.0.1",
    ready_timeout: float = 30.0,
    binary: str | None = None,
    **config_kwargs: Any,
) -> PrometheusServer:
    """Start ``prometheus`` (Debian's, unless ``binary``) with the given scrape jobs and rules;
    returns once it is ready."""
    binary = binary or require_tool("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(
        yaml.safe_dump(prometheus_config(scrape_configs, rule_paths, alertmanager_urls, **config_kwargs))
    )
    port = free_port(host)
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={host}:{port}",
        "--log.level=warn",
    ]
    return launch(PrometheusServer, "prometheus", argv, f"http://{host}:{port}", workdir, ready_timeout)


@contextlib.contextmanager
def prometheus_server(workdir: Path, **kwargs: Any) -> Iterator[PrometheusServer]:
    server = start_prometheus(workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


class MetricsTarget:
    """A static scrape target on loopback serving ``text`` (Prometheus text format) at /metrics.

    For fixture tests of Prometheus itself; set ``text`` to change what the next scrape sees.
    """

    def __init__(self, text: str = "", host: str = "127.0.0.1") -> None:
        import http.server
        import threading

        self.text = text
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = target.text.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-target", daemon=True)

    def __enter__(self) -> MetricsTarget:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


# The operator's metric contract (the operator is built in parallel against these names).
OPERATOR_METRICS = {
    "media_operator_pods_watched",
    "media_operator_scrapes_total",
    "media_operator_quarantines_total",
    "media_operator_decisions_blocked_total",
    "media_operator_evictions_total",
    "media_operator_storm",
}


def all_rules() -> list[dict]:
    return [
        rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def alert_rules() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


def service_metric_names() -> set[str]:
    """Series names the service exposes (counters with their _total), labelled or not."""
    from media_service.metrics import ServiceMetrics

    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in ServiceMetrics().registry.collect()
    }
