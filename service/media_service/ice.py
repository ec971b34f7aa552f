"""ICE configuration: STUN/TURN servers, which local addresses become host candidates, and which
remote addresses the server may send connectivity checks to."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_discover_all = aioice.ice.get_host_addresses
_validate_remote = aioice.ice.validate_remote_candidate

#: Cloud instance-metadata services (AWS, GCP, Azure, OpenStack; AWS's IPv6 one).
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


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


def refusal(address: str, *, allow_loopback: bool, allow_private: bool) -> str | None:
    """Why the server must not send checks to ``address`` (one of metrics.ICE_REFUSAL_REASONS), or None.

    A client's candidates are addresses the server will send STUN packets to: without this, any
    client could make a pod probe its own loopback, the node's link-local services or the cloud's
    metadata service. IPv4 addresses wrapped in IPv6 (mapped, 6to4, NAT64) are judged as IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in METADATA:
        return "metadata"
    if ip.is_loopback:  # before "reserved": ::1 is in the reserved ::/8
        return None if allow_loopback else "loopback"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "unroutable"
    if ip.is_link_local:
        return "link_local"
    if ip.is_private or not ip.is_global:
        return None if allow_private else "private"
    return None


def restrict_remote_addresses(allow_loopback: bool, allow_private: bool, on_refused: Callable[[str], None]) -> None:
    """Refuse remote candidates whose address ``refusal`` names, calling ``on_refused(reason)``.

    aioice's ``validate_remote_candidate`` is the one function every remote candidate passes,
    whichever way it came: in the offer, trickled, or resolved from an mDNS name. A ValueError
    there makes aioice drop the candidate (it logs it and sends nothing), so it is replaced
    process-wide here, like the discovery function above."""

    def validated(candidate: aioice.Candidate, host: str) -> str:
        address: str = _validate_remote(candidate, host)
        reason = refusal(address, allow_loopback=allow_loopback, allow_private=allow_private)
        if reason is not None:
            on_refused(reason)
            raise ValueError(f"{reason} address refused")
        return address

    aioice.ice.validate_remote_candidate = validated
