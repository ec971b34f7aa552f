"""values.schema.json is strict: helm refuses unknown keys and bad values before rendering."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.chart import ALL_ON, CHART, template

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def schema_objects(node: dict[str, Any], path: str = "") -> list[str]:
    """Paths of every object schema with declared properties."""
    found = []
    if node.get("type") == "object" and "properties" in node:
        found.append(path or "/")
        for key, child in node["properties"].items():
            found += schema_objects(child, f"{path}/{key}")
    return found


def test_defaults_and_all_on_are_valid() -> None:
    validator = jsonschema.Draft7Validator(SCHEMA)
    validator.validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert template(ALL_ON).returncode == 0


def test_every_object_rejects_unknown_keys() -> None:
    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, child in node["properties"].items():
                walk(child, f"{path}/{key}")

    walk(SCHEMA, "")
    assert len(schema_objects(SCHEMA)) > 20


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"config": {"adminPortt": 9091}}, "additional properties 'adminPortt' not allowed"),
        ({"operator": {"rbac": {"clusterwide": True}}}, "additional properties 'clusterwide' not allowed"),
        ({"config": {"adminPort": 70000}}, "/config/adminPort"),
        ({"config": {"port": "8080"}}, "/config/port"),
        ({"config": {"drainSeconds": -1}}, "/config/drainSeconds"),
        ({"config": {"leakFactor": 0.5}}, "/config/leakFactor"),
        ({"config": {"wsMaxMessageBytes": 100}}, "/config/wsMaxMessageBytes"),
        ({"config": {"iceHostAddresses": ["node-1"]}}, "/config/iceHostAddresses/0"),
        ({"config": {"logLevel": "trace"}}, "/config/logLevel"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"operator": {"maxQuarantined": "ten"}}, "/operator/maxQuarantined"),
        ({"operator": {"maxQuarantined": "150%"}}, "/operator/maxQuarantined"),
        ({"operator": {"maxQuarantined": 1}}, "/operator/maxQuarantined"),
        ({"operator": {"stormFraction": 1.5}}, "/operator/stormFraction"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
        ({"operator": {"alertNames": []}}, "/operator/alertNames"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "/metrics/serviceMonitor/enabled"),
        ({"metrics": {"serviceMonitor": {"interval": "15 seconds"}}}, "/metrics/serviceMonitor/interval"),
        # TURN credentials belong in a Secret (ice.existingSecret), never in values.
        (
            {"ice": {"servers": [{"urls": "turn:turn.example.org", "username": "u", "credential": "p"}]}},
            "additional properties",
        ),
        ({"ice": {"servers": [{"urls": "http://example.org"}]}}, "/ice/servers/0/urls"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"redis": {"url": "http://redis.example.org:6379"}}, "/redis/url"),
        ({"redis": {"url": "redis.example.org:6379"}}, "/redis/url"),
        ({"redis": {"bundled": {"enabled": "yes"}}}, "/redis/bundled/enabled"),
        ({"redis": {"bundled": {"image": {"tag": ""}}}}, "/redis/bundled/image/tag"),
        ({"redis": {"bundled": {"persistence": {"enabled": True}}}}, "additional properties 'persistence' not allowed"),
        ({"redis": {"password": "s3cret"}}, "/redis/password"),
        ({"redis": {"existingSecretKey": ""}}, "/redis/existingSecretKey"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    result = template(values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"operator": {"maxQuarantined": "10%"}},
        {"operator": {"maxQuarantined": "2.5%"}},
        {"operator": {"podAdminPort": 9191}},
        {"metrics": {"serviceMonitor": {"enabled": False}}},
        {"ice": {"servers": [{"urls": "stun:stun.example.org:3478"}, {"urls": ["turns:t.example.org:443"]}]}},
        {"podDisruptionBudget": {"maxUnavailable": "25%"}},
        {"config": {"wsSendTimeout": 0.5, "drainSeconds": 0}},
        {"redis": {"url": "redis://redis.example.org:6379/0"}},
        {"redis": {"url": "rediss://media:p%40ss@redis.example.org:6380/2?ssl_cert_reqs=required"}},
        {"redis": {"existingSecret": "media-redis", "password": {"existingSecret": "media-redis-auth"}}},
        {"redis": {"bundled": {"enabled": True, "image": {"digest": "sha256:" + "b" * 64}}}, "replicaCount": 1},
    ],
)
def test_good_values_are_accepted(values: dict[str, Any]) -> None:
    result = template(values, check=False)
    assert result.returncode == 0, result.stderr
