"""Which remote candidate addresses the server refuses to send checks to, and why."""

from __future__ import annotations

import pytest

from media_service.ice import refusal
from media_service.metrics import ICE_REFUSAL_REASONS


@pytest.mark.parametrize(
    ("address", "strict", "lenient"),
    [
        ("127.0.0.1", "loopback", None),
        ("::1", "loopback", None),
        ("::ffff:127.0.0.1", "loopback", None),
        ("169.254.169.254", "metadata", "metadata"),
        ("fd00:ec2::254", "metadata", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", "metadata", "metadata"),  # 6to4 of it
        ("169.254.10.1", "link_local", "link_local"),
        ("fe80::1", "link_local", "link_local"),
        ("10.1.2.3", "private", None),
        ("192.168.0.1", "private", None),
        ("100.64.0.1", "private", None),
        ("fd12:3456::1", "private", None),
        ("0.0.0.0", "unroutable", "unroutable"),
        ("224.0.0.1", "unroutable", "unroutable"),
        ("255.255.255.255", "unroutable", "unroutable"),
        ("203.0.113.7", "private", None),  # documentation range: not global
        ("8.8.8.8", None, None),
        ("2001:4860:4860::8888", None, None),
    ],
)
def test_refusals(address: str, strict: str | None, lenient: str | None) -> None:
    assert refusal(address, allow_loopback=False, allow_private=False) == strict
    assert refusal(address, allow_loopback=True, allow_private=True) == lenient
    assert strict is None or strict in ICE_REFUSAL_REASONS
