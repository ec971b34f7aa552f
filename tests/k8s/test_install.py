"""helm install of the chart into a real API server that enforces Pod Security `restricted` and
validates fields strictly; the pods come from the real ReplicaSet controller and are run by the
stand-in kubelet."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.release import helm, kubectl, ready_media_pods, restricted_namespace
from tests.support.chart import CHART
from tests.support.kube_cluster import Cluster
from tests.support.kubelet import Kubelet

NAMESPACE = "media"
RELEASE = "media"


@pytest.fixture(scope="module")
def release(cluster: Cluster, kubelet: Kubelet | None) -> Iterator[str]:
    restricted_namespace(cluster, NAMESPACE)
    installed = helm(cluster, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--timeout", "2m")
    assert installed.returncode == 0, installed.stderr
    try:
        yield RELEASE
    finally:
        helm(cluster, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")


def test_every_object_passes_strict_server_side_validation(cluster: Cluster, tmp_path: Path) -> None:
    restricted_namespace(cluster, "dry-run")
    rendered = helm(cluster, "template", RELEASE, str(CHART), "--namespace", "dry-run")
    assert rendered.returncode == 0, rendered.stderr

    def strict_dry_run(manifests: str) -> subprocess.CompletedProcess[str]:
        args = ("apply", "--server-side", "--dry-run=server", "--validate=strict", "-n", "dry-run", "-f", "-")
        return kubectl(cluster, *args, stdin=manifests)

    applied = strict_dry_run(rendered.stdout)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("serverside-applied") >= 10
    # The control: an unknown field is refused by the same check, so the pass above means something.
    refused = strict_dry_run(rendered.stdout.replace("  replicas:", "  replicaz: 2\n  replicas:", 1))
    assert refused.returncode != 0 and "replicaz" in refused.stderr


def test_helm_install_runs_ready_media_pods_made_by_the_replicaset_controller(
    cluster: Cluster, kubelet: Kubelet | None, release: str
) -> None:
    pods = ready_media_pods(cluster, NAMESPACE, 2)
    for pod in pods:
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet" and owner["controller"] is True
    if kubelet is not None:
        for pod in pods:
            assert pod["spec"]["nodeName"] == kubelet.node
            assert pod["status"]["podIP"].startswith("127.0.0.")
        # The stand-in ran the real service with the pod's own environment: the chart's settings reached it.
        running = kubelet.running(NAMESPACE)
        assert {p.ip for p in running} == {p["status"]["podIP"] for p in pods}
        assert not kubelet.errors, kubelet.errors
