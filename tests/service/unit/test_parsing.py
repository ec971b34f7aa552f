"""Parsing of what clients send: offers, candidates, and WHIP trickle fragments."""

from __future__ import annotations

import pytest

from media_service.offer import OfferLimits
from media_service.sessions import BadRequest, check_offer, parse_candidate
from media_service.whip import parse_sdpfrag

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
