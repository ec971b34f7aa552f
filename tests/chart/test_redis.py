"""The bus between replicas in the chart: which Redis the media pods use (bundled, external by URL
or from a Secret, none), the one clear failure when several pods would have none, the bundled
Redis locked down and fenced off, and the bundled Redis run as rendered: the real redis-server with
the rendered command and probes, and the real service connecting with the rendered settings."""

from __future__ import annotations

import base64
import contextlib
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chart import ALL_ON, NAMESPACE, RELEASE, container, load_all, objects, one, render, template
from tests.support.media_process import media_service
from tests.support.ports import free_port
from tests.support.servers import wait_until
from tests.support.tools import require_tool

REDIS = f"{RELEASE}-media-service-redis"
BUNDLED_URL = f"redis://{REDIS}.{NAMESPACE}.svc:6379/0"
PASSWORD_FILE = "/var/run/secrets/media-service/redis/password"
MEDIA_POD_LABELS = {
    "app.kubernetes.io/name": "media-service",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "media",
}
NO_REDIS_MESSAGE = (
    "needs Redis between the media pods (each reaches users and WHIP sessions on the others through it), "
    "and none is set: set redis.url or redis.existingSecret (an external Redis), redis.bundled.enabled=true "
    '(one Redis in the release), or {key}=1. See "Replicas and Redis" in the chart README.'
)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def media_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return env(container(one(docs, "Deployment", "media")))


def redis_objects(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"
    )


BUNDLED_OBJECTS = sorted(
    [("Deployment", REDIS), ("NetworkPolicy", REDIS), ("Secret", REDIS), ("Service", REDIS), ("ServiceAccount", REDIS)]
)


# --- which Redis ---------------------------------------------------------------------------------


def test_the_default_two_replicas_share_a_bundled_redis() -> None:
    """`helm install` with no values runs two media pods: they get a Redis, or they would not act
    as one service."""
    docs = render()
    assert one(docs, "Deployment", "media")["spec"]["replicas"] == 2
    assert redis_objects(docs) == BUNDLED_OBJECTS
    e = media_env(docs)
    assert e["MEDIA_REDIS_URL"] == BUNDLED_URL
    assert e["MEDIA_REDIS_PASSWORD_FILE"] == PASSWORD_FILE
    assert one(docs, "Service", "redis")["metadata"]["name"] == BUNDLED_URL.split("//")[1].split(".")[0]


@pytest.mark.parametrize(
    "values",
    [
        {"autoscaling": {"enabled": True}},
        {"replicaCount": 1, "redis": {"bundled": {"enabled": True}}},
        {"replicaCount": 5, "redis": {"password": {"existingSecret": "my-redis-password", "secretKey": "pw"}}},
    ],
    ids=["autoscaling", "one-replica-bundled-on-request", "own-password"],
)
def test_bundled_redis_when_asked_or_when_pods_may_be_several(values: dict[str, Any]) -> None:
    docs = render(values)
    assert media_env(docs)["MEDIA_REDIS_URL"] == BUNDLED_URL
    expected_secret = values.get("redis", {}).get("password", {}).get("existingSecret", REDIS)
    key = values.get("redis", {}).get("password", {}).get("secretKey", "password")
    for deployment in (one(docs, "Deployment", "media"), one(docs, "Deployment", "redis")):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if "secret" in v and v["secret"]["secretName"] == expected_secret]
        assert volume["secret"] == {"secretName": expected_secret, "items": [{"key": key, "path": "password"}]}
    generated = [d for d in objects(docs, "Secret") if d["metadata"]["name"] == REDIS]
    assert bool(generated) == (expected_secret == REDIS)


def test_one_replica_runs_alone_without_redis() -> None:
    docs = render({"replicaCount": 1})
    assert redis_objects(docs) == []
    e = media_env(docs)
    assert "MEDIA_REDIS_URL" not in e and "MEDIA_REDIS_PASSWORD_FILE" not in e
    mounts = container(one(docs, "Deployment", "media"))["volumeMounts"]
    assert "redis-password" not in [m["name"] for m in mounts]
    docs = render({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}, "replicaCount": 3})
    assert redis_objects(docs) == []


def test_external_redis_by_url() -> None:
    docs = render({"redis": {"url": "rediss://redis.example.org:6380/2"}})
    assert redis_objects(docs) == []
    e = media_env(docs)
    assert e["MEDIA_REDIS_URL"] == "rediss://redis.example.org:6380/2"
    assert "MEDIA_REDIS_PASSWORD_FILE" not in e
    assert "annotations" not in one(docs, "Deployment", "media")["metadata"]


def test_external_redis_from_secrets() -> None:
    """A URL with credentials and a password both stay in their Secrets; the password is a file."""
    values = {
        "redis": {
            "existingSecret": "media-redis",
            "existingSecretKey": "address",
            "password": {"existingSecret": "media-redis-auth", "secretKey": "pw"},
        }
    }
    docs = render(values)
    assert redis_objects(docs) == []
    deployment = one(docs, "Deployment", "media")
    e = media_env(docs)
    assert e["MEDIA_REDIS_URL"] == {"secretKeyRef": {"name": "media-redis", "key": "address"}}
    assert e["MEDIA_REDIS_PASSWORD_FILE"] == PASSWORD_FILE
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == "redis-password")
    assert mount == {"name": "redis-password", "mountPath": str(Path(PASSWORD_FILE).parent), "readOnly": True}
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "redis-password")
    assert volume["secret"] == {"secretName": "media-redis-auth", "items": [{"key": "pw", "path": "password"}]}
    # checkov prefers secrets as files; the service reads MEDIA_REDIS_URL from its environment only.
    assert deployment["metadata"]["annotations"]["checkov.io/skip2"].startswith("CKV_K8S_35=")


@pytest.mark.parametrize(
    ("values", "key", "count"),
    [
        ({"redis": {"bundled": {"enabled": False}}}, "replicaCount", 2),
        ({"replicaCount": 7, "redis": {"bundled": {"enabled": False}}}, "replicaCount", 7),
        ({"autoscaling": {"enabled": True}, "redis": {"bundled": {"enabled": False}}}, "autoscaling.maxReplicas", 10),
    ],
)
def test_several_pods_without_redis_fail_with_one_clear_message(values: dict[str, Any], key: str, count: int) -> None:
    result = template(values, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].endswith(f"{key}={count} " + NO_REDIS_MESSAGE.format(key=key)), errors[0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"redis": {"url": "redis://a:6379/0", "existingSecret": "b"}},
            "set either redis.url or redis.existingSecret, not both",
        ),
        (
            {"redis": {"url": "redis://a:6379/0", "bundled": {"enabled": True}}},
            "set either an external Redis (redis.url or redis.existingSecret) or redis.bundled.enabled=true, not both",
        ),
    ],
)
def test_two_redis_at_once_are_refused(values: dict[str, Any], message: str) -> None:
    result = template(values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- the media pods' address for the other replicas ----------------------------------------------


@pytest.mark.parametrize("values", [None, {"replicaCount": 1}, {"config": {"port": 8443}}, ALL_ON])
def test_advertise_url_is_the_pod_ip_and_the_public_port(values: dict[str, Any] | None) -> None:
    docs = render(values)
    c = container(one(docs, "Deployment", "media"))
    names = [e["name"] for e in c["env"]]
    # Kubernetes substitutes $(POD_IP) only from a variable defined earlier in the list.
    assert names.index("POD_IP") < names.index("MEDIA_ADVERTISE_URL")
    e = env(c)
    assert e["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
    assert e["MEDIA_ADVERTISE_URL"] == f"http://$(POD_IP):{port}"
    assert port == (values or {}).get("config", {}).get("port", 8080)


# --- the bundled Redis, locked down --------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["default", "all-on"])
def test_bundled_redis_is_locked_down(values: dict[str, Any] | None) -> None:
    docs = render(values)
    deployment = one(docs, "Deployment", "redis")
    assert deployment["spec"]["replicas"] == 1
    # Never two at once: replicas split over two empty servers would not reach each other.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount", "redis")["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 999,
        "runAsGroup": 999,
        "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    c = container(deployment)
    assert c["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 999,
        "runAsGroup": 999,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["resources"]["requests"] and c["resources"]["limits"]
    image, tag = c["image"].rsplit(":", 1)
    assert image == "docker.io/library/redis" and tag.startswith("7.") and tag != "7"
    # Nothing persisted; the only writable place is an emptyDir.
    script = c["command"][-1]
    assert c["command"][:2] == ["sh", "-c"]
    assert '--save ""' in script and "--appendonly no" in script and "--dir /data" in script
    assert '--requirepass "$password"' in script
    assert {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]} == {
        "/data": False,
        "/etc/redis/auth": True,
    }
    data = next(v for v in spec["volumes"] if v["name"] == "data")
    assert "emptyDir" in data
    # A hung Redis still accepts connections: liveness and readiness ask it to answer.
    for probe in ("livenessProbe", "readinessProbe"):
        assert "redis-cli -h 127.0.0.1 ping | grep -qx PONG" in c[probe]["exec"]["command"][-1]
    assert c["startupProbe"]["tcpSocket"] == {"port": "redis"}
    assert c["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    # The password is a file, never an environment variable or an argument in the pod spec.
    assert "env" not in c and "envFrom" not in c


def test_a_chart_upgrade_alone_does_not_restart_the_bundled_redis() -> None:
    """Restarting it empties it (the pods re-register, but messages in flight are lost): its pod
    template carries no chart or app version, so only a change to Redis itself rolls it."""
    labels = one(render(), "Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels
    assert labels["app.kubernetes.io/component"] == "redis"


def test_bundled_redis_admits_only_the_media_pods() -> None:
    docs = render()
    policy = one(docs, "NetworkPolicy", "redis")
    redis_pod_labels = one(docs, "Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    # Quarantined pods too: they still answer for their own sessions.
    assert rule["from"] == [{"podSelector": {"matchLabels": MEDIA_POD_LABELS}}]
    assert rule["ports"] == [{"port": "redis", "protocol": "TCP"}]
    service = one(docs, "Service", "redis")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}]
    assert service["spec"]["selector"] == policy["spec"]["podSelector"]["matchLabels"]
    # The media pods' own policy admits the other replicas' forwarded WHIP requests on the public port.
    public_rule = one(docs, "NetworkPolicy", "media")["spec"]["ingress"][0]
    assert "from" not in public_rule and {"port": "http", "protocol": "TCP"} in public_rule["ports"]


def test_with_host_network_redis_admits_any_source_on_its_port_only() -> None:
    """Host-network pods reach Redis from node addresses, which no pod selector matches: a policy
    naming the media pods would shut them out."""
    (rule,) = one(render({"hostNetwork": True}), "NetworkPolicy", "redis")["spec"]["ingress"]
    assert rule == {"ports": [{"port": "redis", "protocol": "TCP"}]}
    docs = render({"networkPolicy": {"enabled": False}})
    assert one(docs, "Deployment", "redis") and objects(docs, "NetworkPolicy") == []


def test_each_render_without_a_cluster_generates_a_password() -> None:
    """Kept across upgrades by `lookup` (tests/chart/test_webhook_token.py renders against a cluster)."""
    passwords = {
        base64.b64decode(one(load_all(template().stdout), "Secret", "redis")["data"]["password"]).decode()
        for _ in range(2)
    }
    assert len(passwords) == 2 and all(len(p) == 48 and p.isalnum() for p in passwords)


# --- the bundled Redis, run as rendered ----------------------------------------------------------


@contextlib.contextmanager
def rendered_redis(tmp_path: Path, password: str) -> Iterator[tuple[int, str]]:
    """redis-server started by the rendered command, on loopback and a free port; yields the port
    and the rendered liveness probe, both pointed at this folder instead of the pod's paths."""
    require_tool("redis-server", install="apt-get install redis-server (or make tools)")
    require_tool("redis-cli", install="apt-get install redis-tools (or make tools)")
    c = container(one(render(), "Deployment", "redis"))
    auth, data = tmp_path / "auth", tmp_path / "data"
    auth.mkdir()
    data.mkdir()
    (auth / "password").write_text(password)
    port = free_port()

    def here(text: str) -> str:
        return text.replace("/etc/redis/auth", str(auth)).replace("redis-cli -h 127.0.0.1", f"redis-cli -p {port}")

    script = here(c["command"][-1]).replace("--port 6379", f"--port {port} --bind 127.0.0.1")
    script = script.replace("--dir /data", f"--dir {data} --logfile {tmp_path / 'redis.log'}")
    proc = subprocess.Popen([*c["command"][:2], script], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        wait_until(answers, 15, "the rendered redis-server")
        yield port, here(c["livenessProbe"]["exec"]["command"][-1])
    finally:
        proc.send_signal(signal.SIGTERM)  # `exec`: the shell became redis-server
        proc.wait(timeout=15)
    assert proc.returncode == 0
    assert list(data.iterdir()) == [], "the bundled Redis saved something"


def probe(command: str) -> int:
    return subprocess.run(["sh", "-c", command], capture_output=True, timeout=10, check=False).returncode


@pytest.mark.slow
def test_rendered_redis_and_service_settings_work_together(tmp_path: Path) -> None:
    """The generated password reaches the rendered redis-server and, as the mounted file, the real
    service, which connects with the rendered MEDIA_REDIS_URL; the rendered probe passes, and fails
    for a client without the password. Only addresses and paths are changed for loopback."""
    docs = render()
    password = base64.b64decode(one(docs, "Secret", "redis")["data"]["password"]).decode()
    e = media_env(docs)
    with rendered_redis(tmp_path, password) as (port, liveness):
        assert probe(liveness) == 0
        assert probe(liveness.replace(str(tmp_path / "auth" / "password"), "/dev/null")) != 0
        password_file = tmp_path / "media-password"
        password_file.write_text(password + "\n")  # as a Secret created by hand often is
        settings = {
            "MEDIA_REDIS_URL": e["MEDIA_REDIS_URL"].replace(f"{REDIS}.{NAMESPACE}.svc:6379", f"127.0.0.1:{port}"),
            "MEDIA_REDIS_PASSWORD_FILE": str(password_file),
        }
        with media_service(tmp_path, host="127.0.0.5", env=settings) as media:
            assert media.poll_metric("media_bus_up", lambda v: v == 1) == 1
