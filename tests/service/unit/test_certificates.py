"""One DTLS certificate per process (certificates.py), and the aiortc behaviour it relies on: if
aiortc stops generating its peer connections' certificates through the name ``install()``
replaces, the answer's fingerprint and the handshake say so here."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate

from media_service import certificates
from media_service.certificates import CertificateSource, ProcessCertificate
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
    certificates.install()
    certificate = ProcessCertificate.generateCertificate()
    [sha256] = [f.value for f in certificate.getFingerprints() if f.algorithm == "sha-256"]
    peers, answerers = [], []
    for _ in range(2):
        peer = make_peer(data=True)
        offer, _ = await offer_sdp(peer)
        with certificates.sharing(certificate):
            answerer = RTCPeerConnection()
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


async def test_outside_a_sharing_block_aiortc_generates_its_own_certificates(no_leaks: None) -> None:
    certificates.install()
    shared = ProcessCertificate.generateCertificate()
    with certificates.sharing(shared):
        inside = RTCPeerConnection()
    outside = [RTCPeerConnection() for _ in range(2)]
    prints = [await answer_fingerprint(pc) for pc in (inside, *outside)]
    [sha256] = [f.value for f in shared.getFingerprints() if f.algorithm == "sha-256"]
    assert prints[0] == f"a=fingerprint:sha-256 {sha256}"
    assert len(set(prints)) == 3, "peer connections outside the block must each get a certificate of their own"
    for pc in (inside, *outside):
        await pc.close()


async def answer_fingerprint(pc: RTCPeerConnection) -> str:
    peer = make_peer(data=True)
    offer, _ = await offer_sdp(peer)
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await peer.pc.close()
    return fingerprint(pc.localDescription.sdp)


def test_sharing_refuses_to_run_before_install() -> None:
    import aiortc.rtcpeerconnection

    installed = aiortc.rtcpeerconnection.RTCCertificate  # type: ignore[attr-defined]
    aiortc.rtcpeerconnection.RTCCertificate = RTCCertificate  # type: ignore[attr-defined]
    try:
        with (
            pytest.raises(RuntimeError, match="install"),
            certificates.sharing(ProcessCertificate.generateCertificate()),
        ):
            pass
    finally:
        aiortc.rtcpeerconnection.RTCCertificate = installed  # type: ignore[attr-defined]
