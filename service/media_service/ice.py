"""ICE configuration: STUN/TURN servers and which local addresses become host candidates."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_discover_all = aioice.ice.get_host_addresses


def rtc_configuration(ice_servers: Sequence[dict[str, Any]]) -> RTCConfiguration:
    """An explicit, possibly empty server list: aiortc falls back to a public STUN server when
    given none, and where pods have no egress every session then stalls for seconds."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers
        ]
    )


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer host candidates only on ``addresses`` (all non-loopback addresses when empty).

    aioice discovers every interface address and has no option to choose, which matters for pods
    with several interfaces and for loopback-only test setups; its discovery function is the one
    place to choose, so it is replaced process-wide here.
    """
    if not addresses:
        aioice.ice.get_host_addresses = _discover_all
        return
    chosen = [ipaddress.ip_address(a) for a in addresses]

    def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = configured
