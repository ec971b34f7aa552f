"""The shared ICE port's routing rules, as pure logic with a fake clock: which session gets which
datagram, when an address may be claimed, and that leaving forgets everything."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aioice import stun

from media_service.config import SettingsError, load
from media_service.icemux import (
    MuxCounters,
    MuxError,
    Route,
    RoutingTable,
    local_ufrag,
    stun_class,
    stun_kind,
)
from media_service.offer import OfferLimits, check_offer

KEYS = {"MEDIA_AUTH_SECRET_FILE": "/run/secrets/media-auth"}
A, B = ("198.51.100.7", 40000), ("198.51.100.8", 40001)
CORPUS = Path(__file__).resolve().parents[1] / "sdp_corpus"
LIMITS = OfferLimits(max_bytes=16384, max_sections=8, max_tracks=4, max_codecs=64, max_attributes=400)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock) -> tuple[RoutingTable, list[str]]:
    refusals: list[str] = []
    return RoutingTable(MuxCounters(refused=refusals.append), clock=clock, max_addresses=2), refusals


def joined(t: RoutingTable, ufrag: str) -> Route:
    route = Route(ufrag)
    t.join(route)
    return route


def request(username: str | None) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if username is not None:
        message.attributes["USERNAME"] = username
        message.attributes["PRIORITY"] = 1
    message.add_message_integrity(b"a" * 22)
    return bytes(message)


def test_stun_is_told_from_dtls_and_rtp_by_its_first_byte_and_cookie() -> None:
    data = request("local1234567890ab:remote")
    kind = stun_kind(data)
    assert kind is not None and stun_class(kind[0]) == 0 and kind[1] == data[8:20]
    assert local_ufrag(data) == "local1234567890ab"
    assert local_ufrag(request(None)) is None
    assert stun_kind(b"\x16\xfe\xfd" + bytes(40)) is None  # DTLS record
    assert stun_kind(b"\x80\x60" + bytes(40)) is None  # RTP
    assert stun_kind(data[:4] + b"XXXX" + data[8:]) is None  # no magic cookie
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=data[8:20])
    kind = stun_kind(bytes(response))
    assert kind is not None and stun_class(kind[0]) == 2


def test_a_ufrag_is_one_session_and_leaving_forgets_everything() -> None:
    clock = Clock()
    t, _ = table(clock)
    one = joined(t, "u1")
    with pytest.raises(MuxError):
        t.join(Route("u1"))
    assert t.for_request("u1") is one and t.for_request("nobody") is None
    t.expect(one, b"t" * 12)
    assert t.claim(one, A)
    assert (t.sessions, t.addresses, t.transactions) == (1, 1, 1)
    t.leave(one)
    assert t.is_empty() and not one.addresses and not one.transactions
    assert t.for_address(A) is None and t.for_response(b"t" * 12) is None
    assert not t.claim(one, B)  # a route that left claims nothing any more
    t.expect(one, b"u" * 12)
    assert t.is_empty()


def test_an_address_is_never_taken_from_a_live_session() -> None:
    clock = Clock()
    t, refusals = table(clock)
    one, two = joined(t, "u1"), joined(t, "u2")
    assert t.claim(one, A)
    assert not t.claim(two, A)
    assert t.for_address(A) is one and refusals == ["taken"]
    assert t.claim(one, A)  # the holder refreshes freely
    assert t.claim(one, A, confirmed=True) and not t.claim(two, A, confirmed=True)


def test_a_tentative_claim_yields_to_a_confirmed_one_and_a_confirmed_one_to_nothing() -> None:
    """A Binding success sent to a source that may be spoofed is tentative; an integrity-valid
    answer from the address confirms. A client spoofing sources cannot hold addresses hostage."""
    clock = Clock()
    t, refusals = table(clock)
    spoofer, real, third = joined(t, "u1"), joined(t, "u2"), joined(t, "u3")
    assert t.claim(spoofer, A)
    assert not t.claim(real, A) and refusals == ["taken"]
    assert t.claim(real, A, confirmed=True)
    assert t.for_address(A) is real and A not in spoofer.addresses
    assert not t.claim(spoofer, A, confirmed=True) and not t.claim(third, A)
    assert refusals == ["taken", "taken", "taken"]
    t.leave(real)
    assert t.claim(third, A)  # a released address is free at once: clients reconnect from their port


def test_a_session_holds_a_bounded_number_of_addresses() -> None:
    clock = Clock()
    t, refusals = table(clock)
    one = joined(t, "u1")
    assert t.claim(one, A) and t.claim(one, B)
    assert not t.claim(one, ("198.51.100.9", 1)) and refusals == ["address_limit"]


def test_responses_route_by_transaction_until_it_expires() -> None:
    clock = Clock()
    t, _ = table(clock)
    one = joined(t, "u1")
    t.expect(one, b"a" * 12)
    assert t.for_response(b"a" * 12) is one
    assert t.for_response(b"a" * 12) is one  # a first (possibly forged) response does not end it
    clock.now += 61
    t.expect(one, b"b" * 12)  # expiry is swept as requests are sent
    assert t.for_response(b"a" * 12) is None and t.for_response(b"b" * 12) is one
    assert one.transactions == {b"b" * 12}


def test_the_settings_of_the_shared_port() -> None:
    s = load([], KEYS)
    assert (s.ice_udp_port, s.ice_announced_addresses, s.ice_unbundled) == (0, (), "refuse")
    s = load(
        [], {**KEYS, "MEDIA_ICE_UDP_PORT": "3478", "MEDIA_ICE_ANNOUNCED_ADDRESSES": "203.0.113.5:30478, [2001:db8::1]"}
    )
    assert s.ice_announced_addresses == (("203.0.113.5", 30478), ("2001:db8::1", None))
    for bad, message in [
        ("203.0.113.5,203.0.113.6", "at most one IPv4 and one IPv6"),
        ("203.0.113.5:0", "a port from 1 to 65535"),
        ("node.example", "does not appear to be an IPv4 or IPv6 address"),
    ]:
        with pytest.raises(SettingsError, match=message):
            load([], {**KEYS, "MEDIA_ICE_UDP_PORT": "3478", "MEDIA_ICE_ANNOUNCED_ADDRESSES": bad})
    with pytest.raises(SettingsError, match="MEDIA_ICE_ANNOUNCED_ADDRESSES needs MEDIA_ICE_UDP_PORT"):
        load([], {**KEYS, "MEDIA_ICE_ANNOUNCED_ADDRESSES": "203.0.113.5"})


def test_an_offer_shares_the_port_only_if_one_transport_carries_every_section() -> None:
    full = (CORPUS / "aiortc-audio-video-data.sdp").read_bytes().decode()
    assert check_offer(full, LIMITS).bundled
    unbundled = full.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 1")
    assert not check_offer(unbundled, LIMITS).bundled
    assert not check_offer(full.replace("a=group:BUNDLE 0 1 2\r\n", ""), LIMITS).bundled
    single = (CORPUS / "aiortc-data.sdp").read_bytes().decode()
    assert check_offer(single.replace("a=group:BUNDLE 0\r\n", ""), replace(LIMITS)).bundled
