"""The operator's webhook token is generated once and kept: on an upgrade, helm's `lookup` finds
the Secret in the cluster and renders the same token, so Alertmanager's copy stays valid. The
bundled Redis' password is kept the same way, so new media pods still reach the running Redis.

Real helm renders against kmock's KubernetesEmulator over HTTP (`--dry-run=server` performs the
lookups an install or upgrade does).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server

from tests.support.chart import CHART, NAMESPACE, RELEASE, load_all, one
from tests.support.prometheus import require_tool

SECRET = f"{RELEASE}-media-service-operator-webhook"
VERBS = {"create", "get", "list", "watch", "patch", "update", "delete"}
CORE = {"secrets": "Secret", "serviceaccounts": "ServiceAccount", "services": "Service", "pods": "Pod"}
GROUPS = {
    "apps/v1/deployments": "Deployment",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
    "rbac.authorization.k8s.io/v1/roles": "Role",
    "rbac.authorization.k8s.io/v1/rolebindings": "RoleBinding",
    "networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubernetesEmulator, Path]]:
    async with KubernetesEmulator() as k8s, Server(k8s) as server:
        for plural, kind in CORE.items():
            k8s.resources[f"v1/{plural}"] = ResourceInfo(namespaced=True, kind=kind, singular=kind.lower(), verbs=VERBS)
        for key, kind in GROUPS.items():
            k8s.resources[key] = ResourceInfo(namespaced=True, kind=kind, singular=kind.lower(), verbs=VERBS)
        core_list = {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": [
                {"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind, "verbs": sorted(VERBS)}
                for plural, kind in CORE.items()
            ],
        }

        # kmock 0.8 names the core group "/v1" in /api/v1, which client-go's RESTMapper rejects.
        async def api_v1(request: Any) -> dict[str, Any]:
            return core_list

        k8s["get /api/v1"] << api_v1
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "emulator",
                    "clusters": [{"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}],
                    "users": [{"name": "helm", "user": {"token": "emulator"}}],
                    "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "helm"}}],
                }
            )
        )
        yield k8s, kubeconfig


async def render_against(kubeconfig: Path) -> list[dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        require_tool("helm"),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--dry-run=server",
        "--disable-openapi-validation",
        "--kubeconfig",
        str(kubeconfig),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()
    return load_all(out.decode())


def token_of(docs: list[dict[str, Any]]) -> str:
    return base64.b64decode(one(docs, "Secret", "operator")["data"]["token"]).decode()


async def test_upgrade_keeps_the_token_in_the_cluster(cluster: tuple[KubernetesEmulator, Path]) -> None:
    k8s, kubeconfig = cluster
    first = token_of(await render_against(kubeconfig))
    assert len(first) == 48
    # The Secret as the first install left it (with helm's ownership metadata).
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": SECRET,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE},
        },
        "data": {"token": base64.b64encode(first.encode()).decode()},
    }
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=existing) as response:
        assert response.status in (200, 201), await response.text()
    assert token_of(await render_against(kubeconfig)) == first
    assert token_of(await render_against(kubeconfig)) == first


async def test_upgrade_keeps_the_bundled_redis_password(cluster: tuple[KubernetesEmulator, Path]) -> None:
    """A new password on upgrade would lock the media pods started afterwards out of the Redis that
    kept running with the old one."""
    k8s, kubeconfig = cluster

    def password_of(docs: list[dict[str, Any]]) -> str:
        return base64.b64decode(one(docs, "Secret", "redis")["data"]["password"]).decode()

    first = password_of(await render_against(kubeconfig))
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": f"{RELEASE}-media-service-redis",
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": NAMESPACE},
        },
        "data": {"password": base64.b64encode(first.encode()).decode()},
    }
    async with k8s.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json=existing) as response:
        assert response.status in (200, 201), await response.text()
    assert password_of(await render_against(kubeconfig)) == first


def test_without_a_cluster_each_render_generates_a_new_token() -> None:
    """The contrast: what would happen on every upgrade without the lookup."""
    from tests.support.chart import template

    tokens = {token_of(load_all(template().stdout)) for _ in range(2)}
    assert len(tokens) == 2
    assert all(len(t) == 48 and t.isalnum() for t in tokens)
