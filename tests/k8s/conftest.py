"""The real control plane for the k8s tests: one cluster and one stand-in kubelet for this package,
stopped when its last test is done, so that it loads no other test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kube_cluster import Cluster, install_k8s, start_cluster
from tests.support.kubelet import Kubelet


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/k8s/" in str(item.fspath):
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
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
def kubelet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubelet]:
    stand_in = Kubelet(cluster, tmp_path_factory.mktemp("kubelet")).start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
