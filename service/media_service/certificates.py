"""One DTLS certificate for the sessions of a process, replaced after a period, as browsers do.

aiortc makes a new key and self-signed certificate for every RTCPeerConnection, hashes it with five
digest algorithms for the fingerprints of every answer, and builds an OpenSSL context from it for
every DTLS transport. A certificate says nothing about a session (its fingerprint in the signed
SDP is what binds the DTLS handshake to the signaling), so the service keeps one per process:
``ProcessCertificate`` computes its fingerprints and its SSL context once, and
``CertificateSource`` replaces it with a new one ``MEDIA_DTLS_CERTIFICATE_ROTATION`` seconds after
it was made (on the next session: no timer), well within the 30 days aiortc's certificates are
valid.

aiortc 1.16 takes no certificate from its caller: ``RTCPeerConnection.__init__`` generates one into
a private list, read when the first DTLS transport is created. ``use_certificate`` puts the
process's in its place right after the peer connection is made; the key generation aiortc did in
``__init__`` (about 0.1 ms) remains. ``tests/service/unit/test_certificates.py`` checks that the
answer's fingerprint and the DTLS handshake then use the process's certificate, and fails loudly
if an aiortc upgrade moves the list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint

#: The name-mangled attribute of RTCPeerConnection that holds its certificates (aiortc 1.16).
PEER_CONNECTION_CERTIFICATES = "_RTCPeerConnection__certificates"


class ProcessCertificate(RTCCertificate):
    """An aiortc certificate whose fingerprints and OpenSSL contexts are made once, not per use."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key, cert)
        self._fingerprints: list[RTCDtlsFingerprint] | None = None
        self._contexts: dict[tuple[Any, ...], Any] = {}

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: Sequence[Any]) -> Any:
        # One context serves any number of DTLS connections: OpenSSL keeps per-connection state in
        # the connection, and nothing configures the context after it is made.
        key = tuple(srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = super()._create_ssl_context(list(srtp_profiles))
        return context


class CertificateSource:
    """The process's certificate, replaced once it is ``rotation`` seconds old."""

    def __init__(self, rotation: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rotation = rotation
        self.clock = clock
        self._current: ProcessCertificate | None = None
        self._created = 0.0

    def current(self) -> ProcessCertificate:
        now = self.clock()
        if self._current is None or now - self._created >= self.rotation:
            self._current = ProcessCertificate.generateCertificate()
            self._created = now
        return self._current


def use_certificate(pc: RTCPeerConnection, certificate: RTCCertificate) -> None:
    """Make ``pc`` use ``certificate`` for its DTLS transports; call it before the first offer or
    answer (aiortc reads its certificates when it creates a transport)."""
    state = vars(pc)
    if PEER_CONNECTION_CERTIFICATES not in state:
        raise RuntimeError(f"aiortc's RTCPeerConnection has no {PEER_CONNECTION_CERTIFICATES} any more")
    state[PEER_CONNECTION_CERTIFICATES] = [certificate]
