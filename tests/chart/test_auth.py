"""The chart and access tokens: a secret the pods read from a file (an existing Secret, or one
generated once and kept across upgrades), or a JWKS ConfigMap; never MEDIA_AUTH=none unless
auth.allowAnonymous says so; NOTES.txt says how to mint a token."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from media_service.auth import read_secret
from tests.chart import test_webhook_token as webhook
from tests.support.chart import (
    ALL_ON,
    NAMESPACE,
    RELEASE,
    container,
    env,
    load_all,
    notes,
    objects,
    one,
    render,
    template,
)

#: A Kubernetes API emulator that helm renders against: `lookup` finds what an install left.
cluster = webhook.cluster

SECRET_FILE = "/var/run/secrets/media-service/auth/secret"
JWKS = {"auth": {"generateSecret": False, "jwks": {"configMap": "issuer-keys", "key": "keys.json"}}}


def media_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", "media")["spec"]["template"]["spec"]


def mounted(docs: list[dict[str, Any]], variable: str) -> dict[str, Any]:
    """The volume behind the file a MEDIA_AUTH_*_FILE variable names."""
    pod = media_pod(docs)
    path = Path(env(container(one(docs, "Deployment", "media")))[variable])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def test_by_default_a_generated_secret_verifies_tokens(tmp_path: Path) -> None:
    docs = render()
    e = env(container(one(docs, "Deployment", "media")))
    assert (e["MEDIA_AUTH"], e["MEDIA_AUTH_SECRET_FILE"]) == ("token", SECRET_FILE)
    assert "MEDIA_AUTH_JWKS_FILE" not in e
    volume = mounted(docs, "MEDIA_AUTH_SECRET_FILE")
    assert volume["secret"]["secretName"] == "media-media-service-auth"
    assert volume["secret"]["items"] == [{"key": "secret", "path": "secret"}]
    secret = one(docs, "Secret", "media")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    value = base64.b64decode(secret["data"]["secret"])
    (tmp_path / "secret").write_bytes(value)
    assert read_secret(str(tmp_path / "secret")).key == value and len(value) == 64  # what the service accepts


def test_without_a_cluster_each_render_generates_a_new_secret() -> None:
    """Why GitOps renders need auth.existingSecret: without `lookup` there is nothing to keep."""
    secrets = {one(load_all(template().stdout), "Secret", "media")["data"]["secret"] for _ in range(2)}
    assert len(secrets) == 2


async def test_upgrade_keeps_the_secret_in_the_cluster(cluster: Any) -> None:
    """Tokens already handed out stay valid across `helm upgrade`."""
    k8s, kubeconfig = cluster
    first = one(await webhook.render_against(kubeconfig), "Secret", "media")
    name = first["metadata"]["name"]
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "Helm"}},
        "data": first["data"],
    }
    existing["metadata"]["annotations"] = {
        "meta.helm.sh/release-name": RELEASE,
        "meta.helm.sh/release-namespace": NAMESPACE,
    }
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=existing) as response:
        assert response.status in (200, 201), await response.text()
    for _ in range(2):
        assert one(await webhook.render_against(kubeconfig), "Secret", "media")["data"] == first["data"]


def test_an_existing_secret_is_used_not_generated() -> None:
    docs = render({"auth": {"existingSecret": "media-keys", "secretKey": "hmac"}})
    assert [
        s for s in objects(docs, "Secret") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "media"
    ] == []
    volume = mounted(docs, "MEDIA_AUTH_SECRET_FILE")
    assert volume["secret"]["secretName"] == "media-keys"
    assert volume["secret"]["items"] == [{"key": "hmac", "path": "secret"}]


def test_a_jwks_config_map_alone() -> None:
    docs = render({**JWKS, "auth": {**JWKS["auth"], "audience": "media", "issuer": "https://id.example.org"}})
    e = env(container(one(docs, "Deployment", "media")))
    assert "MEDIA_AUTH_SECRET_FILE" not in e and e["MEDIA_AUTH"] == "token"
    assert (e["MEDIA_AUTH_AUDIENCE"], e["MEDIA_AUTH_ISSUER"]) == ("media", "https://id.example.org")
    volume = mounted(docs, "MEDIA_AUTH_JWKS_FILE")
    assert volume["configMap"] == {
        "name": "issuer-keys",
        "defaultMode": 0o444,
        "items": [{"key": "keys.json", "path": "jwks.json"}],
    }
    assert [
        s for s in objects(docs, "Secret") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "media"
    ] == []


def test_no_keys_at_all_is_refused() -> None:
    result = template({"auth": {"generateSecret": False}}, check=False)
    assert result.returncode != 0 and "nothing verifies access tokens" in result.stderr


@pytest.mark.parametrize(
    "values",
    [
        None,
        ALL_ON,
        JWKS,
        {"auth": {"existingSecret": "k"}},
        {"auth": {"allowAnonymous": False, "generateSecret": True}},
    ],
)
def test_authentication_is_never_off_unless_asked(values: dict[str, Any] | None) -> None:
    assert env(container(one(render(values), "Deployment", "media")))["MEDIA_AUTH"] == "token"


def test_allow_anonymous_turns_it_off_and_says_so(tmp_path: Path) -> None:
    docs = render({"auth": {"allowAnonymous": True}})
    e = env(container(one(docs, "Deployment", "media")))
    assert e["MEDIA_AUTH"] == "none" and "MEDIA_AUTH_SECRET_FILE" not in e
    assert not {"auth-secret", "auth-jwks"} & {v["name"] for v in media_pod(docs)["volumes"]}
    assert "authentication is off" in notes({"auth": {"allowAnonymous": True}}, tmp_path)


def test_notes_show_how_to_mint_a_token(tmp_path: Path) -> None:
    text = notes(None, tmp_path)
    assert "kubectl -n media exec deploy/media-media-service -- media-service token --user alice" in text
    assert "issuer-keys" in notes(JWKS, tmp_path)
