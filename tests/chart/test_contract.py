"""The environment the chart renders is accepted by the real service and operator settings loaders,
and names only settings they know (an unknown MEDIA_* variable would be ignored silently)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.chart.render import ALL_ON, one, render
from tests.chart.test_structure import container

CHANGED = {
    "config": {"port": 8443, "adminHost": "127.0.0.1", "adminPort": 9191, "drainSeconds": 12.5,
               "wsSendTimeout": 0.5, "leakFactor": 4, "faultInjection": True, "logFormat": "text",
               "iceHostAddresses": ["10.0.0.7"], "logLevel": "debug"},
    "ice": {"servers": [{"urls": ["stun:stun.example.org:3478"]}]},
    "operator": {"maxQuarantined": "10%", "dryRun": True, "watchNamespaces": ["a", "b"],
                 "alertNames": ["MediaServiceGoroutineLeak", "MediaServiceOrphanedTasks"]},
}


def plain_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


@pytest.mark.parametrize("values", [None, ALL_ON, CHANGED], ids=["default", "all-on", "changed"])
def test_service_loads_the_rendered_settings(values: dict[str, Any] | None) -> None:
    from media_service import config

    env = plain_env(container(one(render(values), "Deployment", "media")))
    known = {f.metadata["env"] for f in dataclasses.fields(config.Settings)}
    assert set(env) - known == set(), f"the service does not know {set(env) - known}"
    settings = config.load([], env)
    assert settings.admin_port == int(env["MEDIA_ADMIN_PORT"])
    assert settings.drain_seconds == float(env["MEDIA_DRAIN_SECONDS"])
    if values is CHANGED:
        assert (settings.port, settings.admin_bind_host, settings.fault_injection) == (8443, "127.0.0.1", True)
        assert settings.ice_servers == ({"urls": ["stun:stun.example.org:3478"]},)
        assert settings.ice_host_addresses == ("10.0.0.7",)


@pytest.mark.parametrize("values", [None, ALL_ON, CHANGED], ids=["default", "all-on", "changed"])
def test_operator_loads_the_rendered_settings(values: dict[str, Any] | None, tmp_path: Path) -> None:
    from media_operator import settings as operator_settings

    docs = render(values)
    env = plain_env(container(one(docs, "Deployment", "operator")))
    known = {option.env for option in operator_settings.OPTIONS}
    assert set(env) - known == set(), f"the operator does not know {set(env) - known}"
    # The token file is the generated Secret's key, mounted where the variable says.
    token = base64.b64decode(one(docs, "Secret", "operator")["data"]["token"]).decode()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    assert env["MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE"] == "/var/run/secrets/media-operator/webhook/token"
    env["MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE"] = str(token_file)
    loaded = operator_settings.load([], env)
    assert loaded.webhook_token == token and len(token) == 48
    assert loaded.selector == {"app.kubernetes.io/name": "media-service", "app.kubernetes.io/instance": "media",
                               "app.kubernetes.io/component": "media"}
    assert loaded.pod_admin_port == int(plain_env(container(one(docs, "Deployment", "media")))["MEDIA_ADMIN_PORT"])
    if values is CHANGED:
        assert str(loaded.max_quarantined) == "10%" and loaded.dry_run is True
        assert loaded.namespaces == ("a", "b")
        assert loaded.alert_names == ("MediaServiceGoroutineLeak", "MediaServiceOrphanedTasks")
