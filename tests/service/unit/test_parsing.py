"""Parsing of what clients send: offers, candidates, and WHIP trickle fragments."""

from __future__ import annotations

import pytest

from media_service.offer import OfferLimits
from media_service.sessions import BadRequest, check_offer, parse_candidate
from media_service.whip import (
    ice_etag,
    ice_server_links,
    parse_if_match,
    parse_sdpfrag,
    restart_credentials,
    strong_match,
)

LINE = "candidate:842163049 1 udp 1677729535 127.0.0.1 46154 typ srflx raddr 0.0.0.0 rport 0"


def test_candidate_lines_parse_with_or_without_prefixes() -> None:
    for text in (LINE, "a=" + LINE, LINE.removeprefix("candidate:")):
        ice = parse_candidate({"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0})
        assert (ice.ip, ice.port, ice.type, ice.sdpMid, ice.sdpMLineIndex) == ("127.0.0.1", 46154, "srflx", "0", 0)


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (None, "object with a 'candidate' string"),
        ({"candidate": 5}, "object with a 'candidate' string"),
        ({"candidate": "candidate:1 1 udp", "sdpMid": "0"}, "not an ICE candidate line"),
        ({"candidate": LINE + " x" * 600, "sdpMid": "0"}, "not an ICE candidate line"),
        ({"candidate": LINE.replace("46154", "port"), "sdpMid": "0"}, "not an ICE candidate line"),
        ({"candidate": LINE}, "needs sdpMid or sdpMLineIndex"),
        ({"candidate": LINE, "sdpMid": 1}, "sdpMid must be a string"),
        ({"candidate": LINE, "sdpMLineIndex": True}, "sdpMLineIndex must be a non-negative integer"),
    ],
)
def test_bad_candidates_say_why(candidate: object, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        parse_candidate(candidate)


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        (None, "non-empty 'sdp' string"),
        ("   ", "non-empty 'sdp' string"),
        ("o=- 1 1 IN IP4 0.0.0.0\r\n", "starts with 'v=0'"),
        ("v=0\r\ns=-\r\n", "no media section"),
    ],
)
def test_offers_without_the_shape_of_an_offer(sdp: object, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        check_offer(sdp, OfferLimits(16384, 8, 4, 64, 400))


def test_sdpfrag_candidates_follow_their_media_section() -> None:
    body = (
        "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=" + LINE + "\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=" + LINE + "\r\na=end-of-candidates\r\n"
    )
    assert parse_sdpfrag(body) == [
        {"candidate": LINE, "sdpMid": "0", "sdpMLineIndex": None},
        {"candidate": LINE, "sdpMid": None, "sdpMLineIndex": 1},
        None,
    ]


def test_sdpfrag_without_media_lines_uses_the_first_section() -> None:
    assert parse_sdpfrag("a=" + LINE + "\n") == [{"candidate": LINE, "sdpMid": None, "sdpMLineIndex": 0}]
    assert parse_sdpfrag("") == []


def test_the_entity_tag_follows_the_ice_credentials_only() -> None:
    answer = "v=0\r\nm=video 9 X 96\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    tag = ice_etag(answer)
    assert tag.startswith('"') and tag.endswith('"') and "abcdefghijklmnopqrstuvwx" not in tag
    assert ice_etag(answer + "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n") == tag
    assert ice_etag(answer.replace("abcd", "abce")) != tag


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("*", "*"), (' "a" ', ['"a"']), ('"a", W/"b"', ['"a"', 'W/"b"']), ('""', ['""'])],
)
def test_if_match_values(value: str, parsed: object) -> None:
    assert parse_if_match(value) == parsed


@pytest.mark.parametrize("value", ["", "a", '"a', '"a" "b"', '"a",', "W/a", '"a"b"', "**"])
def test_malformed_if_match_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_if_match(value)


def test_weak_tags_never_match() -> None:
    assert strong_match(['"x"', '"t"'], '"t"')
    assert not strong_match(['W/"t"'], '"t"')


def test_restart_credentials() -> None:
    assert restart_credentials("a=ice-ufrag:ab+/\r\na=ice-pwd:" + "p" * 22 + "\r\n") == ("ab+/", "p" * 22)
    for bad in ("a=mid:0\r\n", "a=ice-ufrag:abcd\r\n", "a=ice-ufrag:abc\r\na=ice-pwd:" + "p" * 22):
        with pytest.raises(BadRequest):
            restart_credentials(bad)


def test_link_headers_carry_turn_credentials_only() -> None:
    servers = [{"urls": "stun:s.example.org", "username": "x"}, {"urls": ["turns:t.example.org"], "username": "u"}]
    assert ice_server_links(servers) == [
        '<stun:s.example.org>; rel="ice-server"',
        '<turns:t.example.org>; rel="ice-server"; username="u"; credential=""; credential-type="password"',
    ]
