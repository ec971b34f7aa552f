"""Namespaces for the one-port tests, and this process's aiortc peers on the namespace's link."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from media_service.ice import restrict_host_addresses
from tests.support.media_process import MediaProcess, media_service_async
from tests.support.netns import Namespace, leftovers, namespace

#: The one UDP port the service may use inside the namespace (nothing else there uses UDP).
MUX_PORT = 3478


@pytest.fixture
def pod() -> Iterator[Namespace]:
    """A namespace standing for a pod, where UDP passes only to and from MUX_PORT."""
    with namespace() as ns:
        ns.udp_only_through(MUX_PORT)
        yield ns
    assert not [name for name in leftovers() if ns.name.removeprefix("icemux-") in name]


@contextmanager
def clients_on(address: str) -> Iterator[None]:
    """This process's aiortc peers offer ``address`` only (the veth end outside the namespace)."""
    restrict_host_addresses([address])
    try:
        yield
    finally:
        restrict_host_addresses(["127.0.0.1"])


def service_in(pod: Namespace, tmp_path: Path, udp_port: int, **env: str):  # type: ignore[no-untyped-def]
    """The real service inside the namespace, its ICE on ``udp_port`` (0: a port per session)."""
    return media_service_async(
        tmp_path,
        host=pod.inside,
        port=8080,
        admin_port=9090,
        wrap=pod.exec(),
        env={
            "MEDIA_ICE_HOST_ADDRESSES": pod.inside,
            "MEDIA_ICE_ALLOW_LOOPBACK": "0",
            "MEDIA_ICE_UDP_PORT": str(udp_port),
            **env,
        },
    )


__all__ = ["MUX_PORT", "MediaProcess", "clients_on", "service_in"]
