"""One DTLS certificate per process (certificates.py), and the aiortc behaviour it relies on: if
aiortc stops reading its certificates from the list ``use_certificate`` replaces, the answer's
fingerprint and the handshake say so here."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import SRTP_PROFILES

from media_service.certificates import CertificateSource, ProcessCertificate, use_certificate
from tests.support.peers import make_peer, offer_sdp


def fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:sha-256"))


def test_fingerprints_and_ssl_context_are_made_once() -> None:
    certificate = ProcessCertificate.generateCertificate()
    assert certificate.getFingerprints() == certificate.getFingerprints()
    assert {f.algorithm for f in certificate.getFingerprints()} >= {"sha-256"}
    assert certificate._create_ssl_context(SRTP_PROFILES) is certificate._create_ssl_context(list(SRTP_PROFILES))


def test_the_certificate_is_replaced_once_it_is_as_old_as_the_rotation() -> None:
    now = 1000.0
    source = CertificateSource(rotation=60, clock=lambda: now)
    first = source.current()
    now += 59
    assert source.current() is first
    now += 1
    second = source.current()
    assert second is not first
    assert second.getFingerprints() != first.getFingerprints()


async def test_sessions_answer_and_handshake_with_the_process_certificate(no_leaks: None) -> None:
    certificate = ProcessCertificate.generateCertificate()
    [sha256] = [f.value for f in certificate.getFingerprints() if f.algorithm == "sha-256"]
    peers, answerers = [], []
    for _ in range(2):
        peer = make_peer(data=True)
        offer, _ = await offer_sdp(peer)
        answerer = RTCPeerConnection()
        use_certificate(answerer, certificate)
        answerer.on("datachannel", lambda channel: channel.on("message", channel.send))
        await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = answerer.localDescription.sdp
        assert fingerprint(answer) == f"a=fingerprint:sha-256 {sha256}", "aiortc answered with another certificate"
        await peer.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await asyncio.wait_for(peer.channel_open.wait(), 15)
        assert await peer.echo("over DTLS") == "over DTLS"  # the handshake verified that fingerprint
        peers.append(peer)
        answerers.append(answerer)
    for pc in [*answerers, *(p.pc for p in peers)]:
        await pc.close()
