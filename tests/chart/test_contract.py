"""The environment the chart renders is accepted by the real service and operator settings loaders,
and names only settings they know (an unknown MEDIA_* variable would be ignored silently)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import ALL_ON, container, one, render

CHANGED = {
    "config": {
        "port": 8443,
        "adminHost": "127.0.0.1",
        "adminPort": 9191,
        "drainSeconds": 12.5,
        "wsSendTimeout": 0.5,
        "leakFactor": 4,
        "faultInjection": True,
        "logFormat": "text",
        "iceHostAddresses": ["10.0.0.7"],
        "logLevel": "debug",
    },
    "ice": {"servers": [{"urls": ["stun:stun.example.org:3478"]}]},
    "operator": {
        "maxQuarantined": "10%",
        "dryRun": True,
        "watchNamespaces": ["a", "b"],
        "alertNames": ["MediaServiceGoroutineLeak", "MediaServiceOrphanedTasks"],
    },
}

# The largest values the schema allows: YAML numbers reach helm as float64, and a naive template
# prints 16777216 as "1.6777216e+07", which the service's integer parser refuses.
LIMITS = {
    "config": {
        "wsMaxMessageBytes": 16777216,
        "whipMaxBodyBytes": 16777216,
        "maxSessions": 100000,
        "wsSendBuffer": 100000,
        "leakBaselineSamples": 100000,
        "drainSeconds": 86400,
        "maxIceCandidates": 10000,
    },
    "operator": {"evictAfterSeconds": 31536000, "deleteGraceSeconds": 86400000, "scrapeConcurrency": 10000000},
}
# An external Redis: the URL from a Secret (a secretKeyRef), the password as a mounted file.
EXTERNAL_REDIS = {"redis": {"existingSecret": "media-redis", "password": {"existingSecret": "media-redis-password"}}}
VARIANTS = {
    "default": None,
    "all-on": ALL_ON,
    "changed": CHANGED,
    "limits": LIMITS,
    "external-redis": EXTERNAL_REDIS,
    "redis-url": {"redis": {"url": "rediss://user@redis.example.org:6380/1"}},
    "one-replica": {"replicaCount": 1},
}
#: What the kubelet provides in the pod: the pod IP (downward API) and Secret values.
POD_IP = "10.1.2.3"
HOST_IP = "192.0.2.10"
PASSWORD = "from-the-secret"
URL_IN_SECRET = "rediss://media:s3cret@redis.example.org:6380/0"


def plain_env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def as_in_the_pod(c: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The container's environment as the service sees it in the pod: the downward API's POD_IP
    (and HOST_IP, the node's address) substituted into later values, a Secret's URL in
    MEDIA_REDIS_URL, the password file mounted."""
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    assert [e["name"] for e in c["env"] if e.get("valueFrom") == pod_ip] == ["POD_IP"]
    env = {
        name: value.replace("$(POD_IP)", POD_IP).replace("$(HOST_IP)", HOST_IP) for name, value in plain_env(c).items()
    }
    refs = {e["name"]: e["valueFrom"] for e in c["env"] if "valueFrom" in e and e["name"].startswith("MEDIA_")}
    if "MEDIA_REDIS_URL" in refs:
        assert "secretKeyRef" in refs.pop("MEDIA_REDIS_URL")
        env["MEDIA_REDIS_URL"] = URL_IN_SECRET
    refs.pop("MEDIA_ICE_SERVERS", None)
    assert refs == {}, f"settings from sources this test does not provide: {refs}"
    if "MEDIA_REDIS_PASSWORD_FILE" in env:
        mount = next(m for m in c["volumeMounts"] if m["name"] == "redis-password")
        assert env["MEDIA_REDIS_PASSWORD_FILE"] == f"{mount['mountPath']}/password"
        password_file = tmp_path / "password"
        password_file.write_text(PASSWORD)
        env["MEDIA_REDIS_PASSWORD_FILE"] = str(password_file)
    return env


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_loads_the_rendered_settings(variant: str, tmp_path: Path) -> None:
    from media_service import config

    values = VARIANTS[variant]
    c = container(one(render(values), "Deployment", "media"))
    env = plain_env(c)
    assert [v for v in env.values() if "e+" in v] == []
    known = {f.metadata["env"] for f in dataclasses.fields(config.Settings)}
    assert set(env) - known == set(), f"the service does not know {set(env) - known}"
    settings = config.load([], as_in_the_pod(c, tmp_path))
    assert settings.admin_port == int(env["MEDIA_ADMIN_PORT"])
    assert settings.drain_seconds == float(env["MEDIA_DRAIN_SECONDS"])
    # The other replicas forward WHIP requests to the pod's own address and public port.
    assert settings.advertise_url == settings.public_url == f"http://{POD_IP}:{settings.port}"
    if values is None or values is ALL_ON:
        assert settings.redis_url == "redis://media-media-service-redis.media.svc:6379/0"
    if values in (None, ALL_ON, EXTERNAL_REDIS):
        assert Path(settings.redis_password_file).read_text() == PASSWORD
    if values is EXTERNAL_REDIS:
        assert settings.redis_url == URL_IN_SECRET
    if variant == "redis-url":
        assert (settings.redis_url, settings.redis_password_file) == ("rediss://user@redis.example.org:6380/1", "")
    if variant == "one-replica":
        assert (settings.redis_url, settings.redis_password_file) == ("", "")
    if values is ALL_ON:
        assert (settings.ice_udp_port, settings.ice_announced_addresses) == (10000, ((HOST_IP, 10000),))
    if values is CHANGED:
        assert (settings.port, settings.admin_bind_host, settings.fault_injection) == (8443, "127.0.0.1", True)
        assert settings.ice_servers == ({"urls": ["stun:stun.example.org:3478"]},)
        assert settings.ice_host_addresses == ("10.0.0.7",)
    if values is LIMITS:
        assert (settings.ws_max_message_bytes, settings.max_sessions) == (16777216, 100000)


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_loads_the_rendered_settings(variant: str, tmp_path: Path) -> None:
    from media_operator import settings as operator_settings

    values = VARIANTS[variant]
    docs = render(values)
    env = plain_env(container(one(docs, "Deployment", "operator")))
    assert [v for v in env.values() if "e+" in v] == []
    known = {f.metadata["env"] for f in dataclasses.fields(operator_settings.Settings)}
    assert set(env) - known == set(), f"the operator does not know {set(env) - known}"
    # The token file is the generated Secret's key, mounted where the variable says.
    token = base64.b64decode(one(docs, "Secret", "operator")["data"]["token"]).decode()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    assert env["MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE"] == "/var/run/secrets/media-operator/webhook/token"
    env["MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE"] = str(token_file)
    loaded = operator_settings.load([], env)
    assert loaded.webhook_token == token and len(token) == 48
    assert loaded.selector == {
        "app.kubernetes.io/name": "media-service",
        "app.kubernetes.io/instance": "media",
        "app.kubernetes.io/component": "media",
    }
    assert loaded.pod_admin_port == int(plain_env(container(one(docs, "Deployment", "media")))["MEDIA_ADMIN_PORT"])
    if values is CHANGED:
        assert str(loaded.max_quarantined) == "10%" and loaded.dry_run is True
        assert loaded.namespaces == ("a", "b")
        assert loaded.alert_names == ("MediaServiceGoroutineLeak", "MediaServiceOrphanedTasks")
    if values is LIMITS:
        assert (loaded.scrape_concurrency, loaded.evict_after_seconds) == (10000000, 31536000)
