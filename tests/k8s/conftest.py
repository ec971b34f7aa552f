"""The control plane for the k8s tests: one cluster and one stand-in kubelet for this package,
stopped when its last test is done, so that it loads no other test.

With MEDIA_K8S_KUBECONFIG the tests use that cluster instead (kind, for one: docs/testing.md): no
stand-in then, and the tests that watch the stand-in's processes or reach pods from this machine
skip; MEDIA_K8S_AUDIT_LOG says where its API server's audit log can be read."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube_cluster import Cluster, connect_cluster, install_k8s, start_cluster
from tests.support.kubelet import Kubelet


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/k8s/" in str(item.fspath):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if kubeconfig := os.environ.get("MEDIA_K8S_KUBECONFIG"):
        audit = os.environ.get("MEDIA_K8S_AUDIT_LOG")
        yield connect_cluster(Path(kubeconfig), tmp_path_factory.mktemp("cluster"), Path(audit) if audit else None)
        return
    bin_dir = install_k8s()
    if bin_dir is None:
        message = "the Kubernetes binaries are not built; run .ci/install-k8s (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    started = start_cluster(tmp_path_factory.mktemp("cluster"), Path(bin_dir))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="package")
def kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubelet | None]:
    """The stand-in, which runs the pods as local processes; None on a cluster with real kubelets."""
    if cluster.external:
        yield None
        return
    stand_in = Kubelet(cluster, tmp_path_factory.mktemp("kubelet")).start()
    try:
        yield stand_in
    finally:
        stand_in.stop()


@pytest.fixture
def stand_in(kubelet: Kubelet | None) -> Kubelet:
    """For tests that watch the stand-in's processes or reach the pods from this machine."""
    if kubelet is None:
        pytest.skip("needs the stand-in kubelet: it reaches the pods' network and watches their processes")
    return kubelet
