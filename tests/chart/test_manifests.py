"""helm lint --strict and helm template, default and every feature on; every rendered object is
valid against its schema: Kubernetes' (kubernetes-validate, strict) or prometheus-operator's CRD."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.support.chart import ALL_ON, CHART, helm, load_all, render, template, values_file

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "servicemonitor-monitoring-v1.json",
}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
KUBERNETES_VERSIONS = ["1.25.0", kubernetes_validate.utils.latest_version()]
#: An external Redis whose URL and password stay in Secrets, and TURN credentials from a Secret.
EXTERNAL_REDIS: dict[str, Any] = {
    "redis": {"existingSecret": "media-redis", "password": {"existingSecret": "media-redis-password"}},
    "ice": {"existingSecret": "media-turn"},
}
VARIANTS = {"default": None, "all-on": ALL_ON, "external-redis": EXTERNAL_REDIS, "one-replica": {"replicaCount": 1}}


def crd_validator(schema_path: Path) -> jsonschema.protocols.Validator:
    definitions_file = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / (f"v{kubernetes_validate.utils.latest_version()}-local-strict")
        / "_definitions.json"
    )
    definitions = json.loads(definitions_file.read_text())
    registry = referencing.Registry().with_resource(definitions["$id"], referencing.Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(json.loads(schema_path.read_text()), registry=registry)


def validate(obj: dict[str, Any], version: str) -> None:
    """Raise if ``obj`` is invalid, or if there is no schema for its kind."""
    crd = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        crd_validator(crd).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(variant: str, tmp_path: Path) -> None:
    args = ["lint", "--strict", str(CHART)]
    if VARIANTS[variant]:
        args += ["--values", str(values_file(VARIANTS[variant], tmp_path))]
    result = helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_valid(variant: str, version: str) -> None:
    docs = render(VARIANTS[variant])
    assert docs
    for obj in docs:
        validate(obj, version)


@pytest.mark.parametrize(
    "values",
    [*VARIANTS.values(), {"podLabels": {"team": "media"}, "operator": {"podLabels": {"team": "media"}}}],
    ids=[*VARIANTS, "pod-labels"],
)
def test_no_rendered_mapping_repeats_a_key(values: dict[str, Any] | None) -> None:
    """helm and kubectl keep the last of two equal keys; kustomize, Flux, kubeconform and
    server-side strict field validation reject the manifest. render() loads strictly as well."""
    docs = load_all(template(values).stdout)
    assert [d["kind"] for d in docs].count("Deployment") == (
        2 if values in (EXTERNAL_REDIS, {"replicaCount": 1}) else 3
    )


def test_the_strict_loader_rejects_a_repeated_key() -> None:
    text = "kind: Pod\nmetadata:\n  labels:\n    app: a\n    tier: web\n    app: b\n"
    assert yaml.safe_load(text)["metadata"]["labels"] == {"app": "b", "tier": "web"}  # silently
    with pytest.raises(yaml.constructor.ConstructorError, match="found duplicate key 'app'"):
        load_all(text)
    text = "kind: Pod\nmetadata: {labels: {app: a, tier: web}}\n---\n"
    assert load_all(text) == [{"kind": "Pod", "metadata": {"labels": {"app": "a", "tier": "web"}}}]
    # A key that overrides a merged one (`<<`) is not a repeat.
    assert load_all("a: &x {b: 1}\nc: {<<: *x, b: 2}\n") == [{"a": {"b": 1}, "c": {"b": 2}}]


def test_all_on_renders_every_kind() -> None:
    kinds = {d["kind"] for d in render(ALL_ON)}
    assert kinds == {
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }


def test_default_renders_the_whole_system_without_monitoring_crds() -> None:
    """Media pods, operator, helm test, the bundled Redis the two default replicas share, and the
    Secrets: the access-token secret, the webhook token and the Redis password."""
    kinds = sorted(d["kind"] for d in render())
    assert kinds == sorted(
        [
            "Deployment",
            "Deployment",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "Pod",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Secret",
            "Secret",
            "Service",
            "Service",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ServiceAccount",
        ]
    )


def test_monitoring_objects_follow_the_cluster_when_unset() -> None:
    """With the prometheus-operator API present, a plain install gets rules and scraping."""
    kinds = [d["kind"] for d in render(None, "--api-versions", "monitoring.coreos.com/v1")]
    assert kinds.count("ServiceMonitor") == 2 and kinds.count("PrometheusRule") == 1
    off = {
        "metrics": {"serviceMonitor": {"enabled": False}},
        "alerts": {"enabled": False},
        "operator": {"serviceMonitor": {"enabled": False}},
    }
    kinds = [d["kind"] for d in render(off, "--api-versions", "monitoring.coreos.com/v1")]
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds


def test_a_kind_without_schema_fails() -> None:
    with pytest.raises(SchemaNotFoundError):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, KUBERNETES_VERSIONS[-1])


def test_validation_catches_mistakes() -> None:
    """The schemas are strict: a misspelt field fails, in a core kind and in a CRD."""
    docs = render(ALL_ON)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, KUBERNETES_VERSIONS[-1])
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor, KUBERNETES_VERSIONS[-1])
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    with pytest.raises(jsonschema.ValidationError):
        validate(rule, KUBERNETES_VERSIONS[-1])
