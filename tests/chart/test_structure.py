"""What the rendered chart must say: probes, grace period, security, ports, selectors, RBAC,
settings. Each test reads the objects helm renders, not the templates."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.support.chart import ALL_ON, CHART, NAMESPACE, RELEASE, container, env, objects, one, render, template

POOL = {"media-service/pool": "serving"}
MEDIA_LABELS = {
    "app.kubernetes.io/name": "media-service",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "media",
    "media-service/pool": "serving",
}
SERVICE_SETTINGS = {
    "MEDIA_HOST": "0.0.0.0",
    "MEDIA_PORT": "8080",
    "MEDIA_ADMIN_HOST": "0.0.0.0",
    "MEDIA_ADMIN_PORT": "9090",
    "MEDIA_DRAIN_SECONDS": "30",
    "MEDIA_MAX_ICE_CANDIDATES": "50",
    "MEDIA_WS_SEND_BUFFER": "256",
    "MEDIA_WS_SEND_TIMEOUT": "1",
    "MEDIA_WS_MAX_MESSAGE_BYTES": "65536",
    "MEDIA_WS_RATE_LIMIT": "50",
    "MEDIA_LEAK_SAMPLE_INTERVAL": "10",
    "MEDIA_LEAK_BASELINE_SAMPLES": "30",
    "MEDIA_LEAK_FACTOR": "3",
    "MEDIA_LEAK_ORPHAN_GRACE": "30",
    "MEDIA_MAX_SESSIONS": "500",
    "MEDIA_FAULT_INJECTION": "0",
    "MEDIA_WHIP_MAX_BODY_BYTES": "65536",
    "MEDIA_SESSION_CONNECT_TIMEOUT": "30",
    "MEDIA_SESSION_CLOSE_TIMEOUT": "5",
    "POD_IP": {"fieldRef": {"fieldPath": "status.podIP"}},
    "MEDIA_ADVERTISE_URL": "http://$(POD_IP):8080",
    # Two replicas by default: the bundled Redis, with its generated password as a file.
    "MEDIA_REDIS_URL": "redis://media-media-service-redis.media.svc:6379/0",
    "MEDIA_REDIS_PASSWORD_FILE": "/var/run/secrets/media-service/redis/password",
    "MEDIA_LOG_FORMAT": "json",
    "MEDIA_LOG_LEVEL": "info",
    "MEDIA_AUTH": "token",
    "MEDIA_AUTH_SECRET_FILE": "/var/run/secrets/media-service/auth/secret",
}
OPERATOR_SETTINGS = {
    "MEDIA_OPERATOR_NAMESPACES": NAMESPACE,
    "MEDIA_OPERATOR_SELECTOR": "app.kubernetes.io/name=media-service,app.kubernetes.io/instance=media,"
    "app.kubernetes.io/component=media",
    "MEDIA_OPERATOR_POD_ADMIN_PORT": "9090",
    "MEDIA_OPERATOR_SCRAPE_INTERVAL": "15",
    "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "3",
    "MEDIA_OPERATOR_SCRAPE_CONCURRENCY": "50",
    "MEDIA_OPERATOR_CONFIRM_SECONDS": "120",
    "MEDIA_OPERATOR_MAX_QUARANTINED": "1",
    "MEDIA_OPERATOR_STORM_FRACTION": "0.5",
    "MEDIA_OPERATOR_COOLDOWN_SECONDS": "300",
    "MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "900",
    "MEDIA_OPERATOR_DELETE_GRACE_SECONDS": "300",
    "MEDIA_OPERATOR_DRY_RUN": "false",
    "MEDIA_OPERATOR_HTTP_HOST": "0.0.0.0",
    "MEDIA_OPERATOR_HTTP_PORT": "8081",
    "MEDIA_OPERATOR_WEBHOOK_TOKEN_FILE": "/var/run/secrets/media-operator/webhook/token",
    "MEDIA_OPERATOR_ALERT_NAMES": "MediaServiceGoroutineLeak",
    "MEDIA_OPERATOR_LOG_FORMAT": "json",
}
# The most the operator may ever be granted (its contract). The exact set is proven by
# tests/operator/test_rbac.py, which records the calls the real operator makes against the emulator.
OPERATOR_ALLOWED = {
    ("get", "", "pods"),
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("patch", "", "pods"),
    ("delete", "", "pods"),
    ("create", "", "pods/eviction"),
    ("create", "", "events"),
}
OPERATOR_NEEDED = {
    ("list", "", "pods"),
    ("watch", "", "pods"),
    ("patch", "", "pods"),
    ("create", "", "pods/eviction"),
    ("create", "", "events"),
}


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (verb, group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def media_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "media")


def pods_of(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in objects(docs, "Deployment")]
    specs += [(d["metadata"]["name"], d["spec"]) for d in objects(docs, "Pod")]
    return specs


def test_probes_are_separate_and_on_the_admin_port() -> None:
    c = container(media_deployment(render()))
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    # Readiness must turn false at the first failed check when draining starts.
    assert c["readinessProbe"]["failureThreshold"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    assert c["command"] == ["media-service"]


@pytest.mark.parametrize("drain", [30, 0, 7.5, 600])
def test_grace_period_outlasts_the_drain_window(drain: float) -> None:
    values = {"config": {"drainSeconds": drain}}
    deployment = media_deployment(render(values))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain
    assert grace == int(-(-drain // 1)) + 15
    assert env(container(deployment))["MEDIA_DRAIN_SECONDS"] == str(drain)


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_every_pod_is_locked_down(values: dict[str, Any] | None) -> None:
    for name, spec in pods_of(render(values)):
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert c["resources"]["limits"] and c["resources"]["requests"], name
        assert not spec.get("hostPID") and not spec.get("hostIPC"), name


def test_only_the_operator_gets_an_api_token() -> None:
    docs = render()
    tokens = {name: spec.get("automountServiceAccountToken") for name, spec in pods_of(docs)}
    assert tokens == {
        "media-media-service": False,
        "media-media-service-operator": True,
        "media-media-service-redis": False,
        "media-media-service-test-health": False,
    }
    for component in ("media", "redis"):
        assert one(docs, "ServiceAccount", component)["automountServiceAccountToken"] is False


def test_public_service_has_no_admin_port() -> None:
    for values in (None, ALL_ON, {"service": {"type": "LoadBalancer", "port": 443}}):
        docs = render(values)
        public = next(s for s in objects(docs, "Service") if s["metadata"]["name"] == "media-media-service")
        assert [(p["name"], p["targetPort"]) for p in public["spec"]["ports"]] == [("http", "http")]
        assert all(p["port"] != 9090 for p in public["spec"]["ports"])
        metrics = one(docs, "Service", "media-metrics")
        assert metrics["spec"]["type"] == "ClusterIP"
        assert [(p["name"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("admin", "admin")]


def test_serving_selectors_carry_the_pool_label() -> None:
    docs = render(ALL_ON)
    deployment = media_deployment(docs)
    assert deployment["spec"]["selector"]["matchLabels"] == MEDIA_LABELS
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert MEDIA_LABELS.items() <= template_labels.items()
    public = next(s for s in objects(docs, "Service") if s["metadata"]["name"] == "media-media-service")
    assert public["spec"]["selector"] == MEDIA_LABELS
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == MEDIA_LABELS
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == MEDIA_LABELS


def test_quarantined_pods_stay_scraped_and_protected() -> None:
    """Only serving selectors have the pool label: metrics, NetworkPolicy and operator see all pods."""
    docs = render(ALL_ON)
    metrics = one(docs, "Service", "media-metrics")
    assert "media-service/pool" not in metrics["spec"]["selector"]
    policy = one(docs, "NetworkPolicy", "media")
    assert "media-service/pool" not in policy["spec"]["podSelector"]["matchLabels"]
    operator_env = env(container(one(render(), "Deployment", "operator")))
    assert "pool" not in operator_env["MEDIA_OPERATOR_SELECTOR"]


def test_service_settings_come_from_values() -> None:
    c = container(media_deployment(render()))
    assert env(c) == SERVICE_SETTINGS
    changed = {"config": {"adminHost": "127.0.0.1", "maxSessions": 20, "faultInjection": True, "logFormat": "text"}}
    e = env(container(media_deployment(render(changed))))
    assert (e["MEDIA_ADMIN_HOST"], e["MEDIA_MAX_SESSIONS"], e["MEDIA_FAULT_INJECTION"], e["MEDIA_LOG_FORMAT"]) == (
        "127.0.0.1",
        "20",
        "1",
        "text",
    )


def test_ice_servers_plain_or_from_a_secret() -> None:
    e = env(container(media_deployment(render(ALL_ON))))
    assert json.loads(e["MEDIA_ICE_SERVERS"]) == [{"urls": ["stun:stun.example.org:3478"]}]
    e = env(container(media_deployment(render({"ice": {"existingSecret": "turn", "existingSecretKey": "servers"}}))))
    assert e["MEDIA_ICE_SERVERS"] == {"secretKeyRef": {"name": "turn", "key": "servers"}}
    assert "MEDIA_ICE_SERVERS" not in env(container(media_deployment(render())))
    both = template({"ice": {"existingSecret": "turn", "servers": [{"urls": "stun:a.example:3478"}]}}, check=False)
    assert both.returncode != 0 and "either ice.servers or ice.existingSecret" in both.stderr


def test_host_network_uses_cluster_dns() -> None:
    spec = media_deployment(render(ALL_ON))["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in media_deployment(render())["spec"]["template"]["spec"]


def test_images_default_to_app_version_and_can_be_pinned() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    docs = render()
    assert container(media_deployment(docs))["image"] == f"ghcr.io/media-service/media-service:{app_version}"
    assert container(one(docs, "Deployment", "operator"))["image"] == (
        f"ghcr.io/media-service/media-operator:{app_version}"
    )
    digest = "sha256:" + "a" * 64
    pinned = render({"image": {"digest": digest, "tag": "x"}, "operator": {"image": {"tag": "1.2.3"}}})
    assert container(media_deployment(pinned))["image"] == f"ghcr.io/media-service/media-service@{digest}"
    assert container(one(pinned, "Deployment", "operator"))["image"].endswith(":1.2.3")


def test_operator_deployment() -> None:
    docs = render()
    deployment = one(docs, "Deployment", "operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(deployment)
    assert c["command"] == ["media-operator"]
    assert env(c) == OPERATOR_SETTINGS
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/run/secrets/media-operator/webhook"] == "webhook-token"
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "webhook-token")
    secret = one(docs, "Secret", "operator")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    assert len(secret["data"]["token"]) >= 48
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_every_operator_setting_is_a_value() -> None:
    values = {
        "operator": {
            "watchNamespaces": ["a", "b"],
            "podSelector": "app=x",
            "podAdminPort": 9999,
            "scrapeInterval": 5,
            "scrapeTimeout": 1,
            "scrapeConcurrency": 7,
            "confirmSeconds": 60,
            "maxQuarantined": "10%",
            "stormFraction": 0.3,
            "cooldownSeconds": 10,
            "evictAfterSeconds": 20,
            "deleteGraceSeconds": 30,
            "dryRun": True,
            "httpPort": 8888,
            "alertNames": ["A", "B"],
            "logFormat": "text",
        }
    }
    e = env(container(one(render(values), "Deployment", "operator")))
    assert {k: e[k] for k in OPERATOR_SETTINGS} == {
        **OPERATOR_SETTINGS,
        "MEDIA_OPERATOR_NAMESPACES": "a,b",
        "MEDIA_OPERATOR_SELECTOR": "app=x",
        "MEDIA_OPERATOR_POD_ADMIN_PORT": "9999",
        "MEDIA_OPERATOR_SCRAPE_INTERVAL": "5",
        "MEDIA_OPERATOR_SCRAPE_TIMEOUT": "1",
        "MEDIA_OPERATOR_SCRAPE_CONCURRENCY": "7",
        "MEDIA_OPERATOR_CONFIRM_SECONDS": "60",
        "MEDIA_OPERATOR_MAX_QUARANTINED": "10%",
        "MEDIA_OPERATOR_STORM_FRACTION": "0.3",
        "MEDIA_OPERATOR_COOLDOWN_SECONDS": "10",
        "MEDIA_OPERATOR_EVICT_AFTER_SECONDS": "20",
        "MEDIA_OPERATOR_DELETE_GRACE_SECONDS": "30",
        "MEDIA_OPERATOR_DRY_RUN": "true",
        "MEDIA_OPERATOR_HTTP_PORT": "8888",
        "MEDIA_OPERATOR_ALERT_NAMES": "A,B",
        "MEDIA_OPERATOR_LOG_FORMAT": "text",
    }


def test_operator_rbac_is_namespaced_and_least_privilege() -> None:
    docs = render()
    (role,) = objects(docs, "Role")
    (binding,) = objects(docs, "RoleBinding")
    assert not objects(docs, "ClusterRole") and not objects(docs, "ClusterRoleBinding")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert OPERATOR_NEEDED <= grants(role) <= OPERATOR_ALLOWED
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    sa = one(docs, "ServiceAccount", "operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


def test_operator_rbac_per_watched_namespace_or_cluster_wide() -> None:
    docs = render({"operator": {"watchNamespaces": ["media", "canary"]}})
    assert sorted(r["metadata"]["namespace"] for r in objects(docs, "Role")) == ["canary", "media"]
    assert sorted(b["metadata"]["namespace"] for b in objects(docs, "RoleBinding")) == ["canary", "media"]
    docs = render({"operator": {"rbac": {"clusterWide": True}}})
    (role,) = objects(docs, "ClusterRole")
    assert grants(role) == grants(objects(render(), "Role")[0]) and "namespace" not in role["metadata"]
    assert one(docs, "ClusterRoleBinding")["roleRef"]["kind"] == "ClusterRole"
    assert not objects(docs, "Role")
    assert env(container(one(docs, "Deployment", "operator")))["MEDIA_OPERATOR_NAMESPACES"] == ""


def test_rbac_template_has_one_rules_block() -> None:
    """The operator's own test edits the `rules:` of this file; there must be exactly one."""
    text = (CHART / "templates" / "operator" / "rbac.yaml").read_text()
    assert text.count("\nrules:\n") == 1
    assert "*" not in text.split("\nrules:\n")[1].split("---")[0]


def test_operator_off_renders_no_operator_object() -> None:
    docs = render({"operator": {"enabled": False}})
    assert [d["kind"] for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"] == []


def test_existing_webhook_secret_is_used_not_generated() -> None:
    docs = render({"operator": {"webhook": {"existingSecret": "am-token", "secretKey": "bearer"}}})
    assert sorted(s["metadata"]["name"] for s in objects(docs, "Secret")) == [
        "media-media-service-auth",
        "media-media-service-redis",
    ]
    volume = next(
        v
        for v in one(docs, "Deployment", "operator")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "webhook-token"
    )
    assert volume["secret"]["secretName"] == "am-token"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


def test_network_policy_guards_the_admin_port() -> None:
    docs = render()
    policy = one(docs, "NetworkPolicy", "media")
    public_rule, admin_rule = policy["spec"]["ingress"]
    assert "from" not in public_rule
    assert public_rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"protocol": "UDP"}]
    assert admin_rule["ports"] == [{"port": "admin", "protocol": "TCP"}]
    peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in admin_rule["from"]]
    assert {
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/name": "media-service",
    } in peers
    assert {"app.kubernetes.io/name": "prometheus"} in peers
    test_pod = one(docs, "Pod")
    assert any(
        p.items() <= test_pod["metadata"]["labels"].items()
        for p in peers
        if "app.kubernetes.io/component" in p and p["app.kubernetes.io/component"] == "helm-test"
    )


def test_monitoring_objects_select_what_the_rules_expect() -> None:
    docs = render(ALL_ON)
    media_monitor = one(docs, "ServiceMonitor", "media")
    assert media_monitor["metadata"]["labels"]["release"] == "prometheus"
    metrics = one(docs, "Service", "media-metrics")
    assert media_monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    (endpoint,) = media_monitor["spec"]["endpoints"]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    assert {"action": "replace", "targetLabel": "job", "replacement": "media-service"} in endpoint["relabelings"]
    operator_monitor = one(docs, "ServiceMonitor", "operator")
    (endpoint,) = operator_monitor["spec"]["endpoints"]
    assert {"action": "replace", "targetLabel": "job", "replacement": "media-operator"} in endpoint["relabelings"]
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"


def test_hpa_replaces_the_replica_count() -> None:
    docs = render(ALL_ON)
    assert "replicas" not in media_deployment(docs)["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == media_deployment(docs)["metadata"]["name"]
    assert media_deployment(render())["spec"]["replicas"] == 2


def test_helm_test_hook_checks_health_and_ready() -> None:
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert '"/health", "/ready"' in script
    assert "http://media-media-service-metrics:9090" in script


def test_every_namespaced_object_names_the_release_namespace() -> None:
    for obj in render(ALL_ON):
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] in {NAMESPACE, "media-canary"}, obj["metadata"]["name"]
