"""The one ICE port in the chart: exposed as a hostPort or on the host network, announced at the
node's address, a rollout that can proceed when each pod holds a port of its node, and the
NetworkPolicy narrowed to that port."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from media_service.config import load
from tests.support.chart import container, env, notes, one, render, template

ON = {"iceMux": {"enabled": True}}


def media(values: dict[str, Any] | None) -> dict[str, Any]:
    return one(render(values), "Deployment", "media")


def udp_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
    policy = one(render({**values, "networkPolicy": {"enabled": True}}), "NetworkPolicy", "media")
    return [port for rule in policy["spec"]["ingress"] for port in rule["ports"] if port["protocol"] == "UDP"]


def test_off_by_default_with_a_port_per_session() -> None:
    deployment = media(None)
    names = env(container(deployment))
    assert "MEDIA_ICE_UDP_PORT" not in names and "HOST_IP" not in names
    assert all(p["protocol"] == "TCP" for p in container(deployment)["ports"])
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": 0}
    assert udp_rules({}) == [{"protocol": "UDP"}]  # aiortc's random ports


def test_host_port_mode_announces_the_node_address() -> None:
    deployment = media(ON)
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    (ice,) = [p for p in c["ports"] if p["name"] == "ice"]
    assert ice == {"name": "ice", "containerPort": 10000, "protocol": "UDP", "hostPort": 10000}
    assert "hostNetwork" not in pod
    variables = [e["name"] for e in c["env"]]
    names = env(c)
    assert names["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # Kubernetes substitutes $(HOST_IP) and $(POD_IP) only in variables defined after them.
    assert variables.index("HOST_IP") < variables.index("MEDIA_ICE_ANNOUNCED_ADDRESSES")
    assert variables.index("POD_IP") < variables.index("MEDIA_ICE_HOST_ADDRESSES")
    assert (names["MEDIA_ICE_UDP_PORT"], names["MEDIA_ICE_ANNOUNCED_ADDRESSES"]) == ("10000", "$(HOST_IP):10000")
    assert (names["MEDIA_ICE_HOST_ADDRESSES"], names["MEDIA_ICE_UNBUNDLED"]) == ("$(POD_IP)", "refuse")
    # Remove before adding: a surge pod could not get the node's port.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert "CKV_K8S_26" in deployment["metadata"]["annotations"]["checkov.io/skip3"]


def test_the_rendered_settings_are_ones_the_service_accepts() -> None:
    names = env(container(media({"iceMux": {"enabled": True, "port": 3478, "announcedPort": 30478}})))
    environ = {
        name: re.sub(r"\$\((POD_IP|HOST_IP)\)", "10.0.0.7", value)
        for name, value in names.items()
        if isinstance(value, str) and name.startswith("MEDIA_ICE")
    }
    settings = load([], {**environ, "MEDIA_AUTH_SECRET_FILE": "/run/secrets/auth"})
    assert settings.ice_udp_port == 3478
    assert settings.ice_announced_addresses == (("10.0.0.7", 30478),)
    assert settings.ice_host_addresses == ("10.0.0.7",)
    assert settings.ice_udp_receive_buffer == 4194304


def test_host_network_mode_binds_the_node_port_itself() -> None:
    deployment = media({"iceMux": {"enabled": True, "mode": "hostNetwork", "maxUnavailable": "25%"}})
    pod = deployment["spec"]["template"]["spec"]
    (ice,) = [p for p in container(deployment)["ports"] if p["name"] == "ice"]
    assert "hostPort" not in ice
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": "25%"}
    assert env(container(deployment))["MEDIA_ADMIN_HOST"] == "$(POD_IP)"


def test_announced_addresses_from_values() -> None:
    values = {"iceMux": {"enabled": True, "announcedAddresses": ["203.0.113.10:30478", "[2001:db8::10]:30478"]}}
    names = env(container(media(values)))
    assert names["MEDIA_ICE_ANNOUNCED_ADDRESSES"] == "203.0.113.10:30478,[2001:db8::10]:30478"


def test_the_network_policy_opens_only_the_one_port() -> None:
    assert udp_rules(ON) == [{"port": "ice", "protocol": "UDP"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iceMux": {"mode": "nodePort"}}, "/iceMux/mode"),
        ({"iceMux": {"port": 0}}, "/iceMux/port"),
        ({"iceMux": {"unbundled": "maybe"}}, "/iceMux/unbundled"),
        ({"iceMux": {"maxUnavailable": 0}}, "/iceMux/maxUnavailable"),
        ({"iceMux": {"announcedAddresses": ["a", "b", "c"]}}, "/iceMux/announcedAddresses"),
        ({"iceMux": {"rmem": 1}}, "iceMux"),
    ],
)
def test_bad_values_are_refused(values: dict[str, Any], message: str) -> None:
    result = template(values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert message in result.stderr, result.stderr


def test_notes_say_which_port_to_open(tmp_path: Path) -> None:
    text = notes(ON, tmp_path)
    assert "UDP port 10000 of each node" in text and "net.core.rmem_max" in text
    assert "WARNING: no ICE servers" not in text
