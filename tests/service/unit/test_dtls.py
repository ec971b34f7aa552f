"""The DTLS role rewrite (dtls.py), and the aiortc behaviour it relies on: if aiortc stops taking
the DTLS role from the local answer's ``a=setup``, or starts answering ``actpass`` differently,
these tests say so before any interop test fails with a handshake timeout."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from media_service.dtls import offered_setups, prefer_server
from tests.support.peers import make_peer, offer_sdp

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=setup:actpass\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=setup:active\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\na=setup:passive\r\n"
)


def test_setups_per_section_with_the_session_level_default() -> None:
    assert offered_setups(OFFER) == ["actpass", "active", "passive"]
    assert offered_setups("v=0\r\nm=audio 9 X 0\r\n") == [None]


def test_only_sections_offered_actpass_change() -> None:
    answer = (
        "v=0\r\ns=-\r\nm=audio 9 X 111\r\na=setup:active\r\n"
        "m=video 9 X 96\r\na=setup:passive\r\nm=application 9 X w\r\na=setup:active\r\n"
    )
    assert prefer_server(OFFER, answer) == answer.replace("a=setup:active\r\nm=video", "a=setup:passive\r\nm=video")


def dtls_roles(pc: RTCPeerConnection) -> set[str]:
    """The role of each DTLS transport: private to aiortc, read here only to pin its behaviour."""
    transports = {t.receiver.transport for t in pc.getTransceivers()}
    if pc.sctp is not None:
        transports.add(pc.sctp.transport)
    return {t._role for t in transports}


@pytest.mark.parametrize(
    ("setup", "aiortc_answers", "we_answer", "role"),
    [
        ("actpass", "active", "passive", "server"),
        ("active", "passive", "passive", "server"),
        ("passive", "active", "active", "client"),
    ],
)
async def test_aiortc_takes_the_dtls_role_from_the_local_answer(
    setup: str, aiortc_answers: str, we_answer: str, role: str, no_leaks: None
) -> None:
    peer = make_peer(video=True, data=True)
    offer, _ = await offer_sdp(peer, setup=setup)
    answerer = RTCPeerConnection()
    await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    answer = await answerer.createAnswer()
    assert set(offered_setups(answer.sdp)) == {aiortc_answers}, "aiortc changed how it answers a=setup"
    await answerer.setLocalDescription(RTCSessionDescription(prefer_server(offer, answer.sdp), "answer"))
    assert set(offered_setups(answerer.localDescription.sdp)) == {we_answer}
    assert dtls_roles(answerer) == {role}, "aiortc no longer takes the DTLS role from the local answer"
    await answerer.close()
    await peer.close()
