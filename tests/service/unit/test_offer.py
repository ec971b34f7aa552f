"""The offer check that runs before aiortc: each bound and each rule, named in the refusal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from media_service.offer import OfferLimits, OfferRefused, check_offer

CORPUS = Path(__file__).resolve().parents[1] / "sdp_corpus"
FULL = (CORPUS / "aiortc-audio-video-data.sdp").read_bytes().decode()
LIMITS = OfferLimits(max_bytes=16384, max_sections=8, max_tracks=4, max_codecs=64, max_attributes=400)


def many_videos(count: int) -> str:
    """The audio+video+data offer with its video section repeated ``count`` times, each its own mid."""
    head, rest = FULL.split("m=video", 1)
    head = head.replace("a=group:BUNDLE 0 1 2", "a=group:BUNDLE 0 " + " ".join(f"v{i}" for i in range(count)) + " 2")
    video, application = rest.split("m=application", 1)
    return (
        head
        + "".join("m=video" + video.replace("a=mid:1", f"a=mid:v{i}") for i in range(count))
        + ("m=application" + application)
    )


def test_real_offers_pass_with_their_shape() -> None:
    for path in sorted(CORPUS.glob("*.sdp")):
        check_offer(path.read_bytes().decode(), LIMITS)
    shape = check_offer(FULL, LIMITS)
    assert (shape.sections, shape.tracks) == (3, 2)
    assert check_offer(many_videos(3), replace(LIMITS, max_bytes=65536)).tracks == 4


@pytest.mark.parametrize(
    ("limits", "sdp", "bound"),
    [
        (replace(LIMITS, max_bytes=1000), FULL, "MEDIA_MAX_OFFER_BYTES (1000)"),
        (replace(LIMITS, max_sections=2), FULL, "MEDIA_MAX_OFFER_SECTIONS (2)"),
        (replace(LIMITS, max_bytes=10**6), many_videos(4), "MEDIA_MAX_OFFER_TRACKS (4)"),
        (replace(LIMITS, max_codecs=5), FULL, "6 payload types, over MEDIA_MAX_OFFER_CODECS (5)"),
        (replace(LIMITS, max_attributes=20), FULL, "MEDIA_MAX_OFFER_ATTRIBUTES (20)"),
    ],
)
def test_each_bound_is_named(limits: OfferLimits, sdp: str, bound: str) -> None:
    with pytest.raises(OfferRefused, match=bound.replace("(", r"\(").replace(")", r"\)")):
        check_offer(sdp, limits)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s.replace("a=mid:1\r\n", ""), "needs exactly one a=mid"),
        (lambda s: s.replace("a=mid:1\r\n", "a=mid:0\r\n"), "repeats mid '0'"),
        (lambda s: s.replace("a=mid:2\r\n", "a=mid:2\r\na=mid:3\r\n"), "needs exactly one a=mid"),
        (lambda s: s.replace("a=rtpmap:97 VP8/90000\r\n", ""), "payload type '97' has no a=rtpmap"),
        (lambda s: s.replace("a=fmtp:98 apt=97", "a=fmtp:98 apt=12"), "payload type '12' has no a=rtpmap"),
        (lambda s: s.replace("a=setup:actpass\r\n", ""), "needs a=setup and a=fingerprint"),
        (lambda s: s.replace("a=setup:actpass", "a=setup:x"), "a=setup is active"),
        (lambda s: s.replace("a=ice-pwd:", "a=ice-pw:"), "ICE username fragment or password is missing"),
        (lambda s: s.replace("UDP/TLS/RTP/SAVPF 96 9 0 8", "UDP/TLS/RTP/SAVPF 96 x"), "payload types are integers"),
        (lambda s: s.replace("m=audio 60297 UDP/TLS/RTP/SAVPF 96 9 0 8", "m=audio 1"), "an m= line is"),
        (lambda s: s.replace("s=-", "garbage"), "is not 'x=value'"),
        (lambda s: s.replace("BUNDLE 0 1 2", "BUNDLE 7 1 2"), "BUNDLE names '7'"),
        (lambda s: s.replace("m=application", "m=applcation"), "media is audio, video or application"),
        (lambda s: s.replace("a=sctp-port:5000", "a=fmtp:120 apt=121"), "payload type '120' has no a=rtpmap"),
    ],
)
def test_what_aiortc_would_trip_over_is_refused(edit, reason: str) -> None:  # type: ignore[no-untyped-def]
    sdp = edit(FULL)
    assert sdp != FULL
    with pytest.raises(OfferRefused, match=reason):
        check_offer(sdp, LIMITS)


def test_lines_are_split_as_aiortc_splits_them() -> None:
    """str.splitlines, which aiortc uses, splits at more than CR/LF: sections behind such a
    separator count too."""
    hidden = FULL.replace("\r\nm=video", "\u2028m=video").replace("\r\nm=application", "\x1cm=application")
    assert check_offer(hidden, LIMITS).sections == 3
    with pytest.raises(OfferRefused, match="MEDIA_MAX_OFFER_SECTIONS"):
        check_offer(hidden, replace(LIMITS, max_sections=2))
