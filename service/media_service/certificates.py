"""One DTLS certificate for the sessions of a process, replaced after a period, as browsers do.

aiortc makes a new key and self-signed certificate for every RTCPeerConnection, hashes it with five
digest algorithms for the fingerprints of every answer, and builds an OpenSSL context from it for
every DTLS transport. A certificate says nothing about a session (its fingerprint in the signed
SDP is what binds the DTLS handshake to the signaling), so the service keeps one per process:
``ProcessCertificate`` computes its fingerprints and its SSL context once, and
``CertificateSource`` replaces it with a new one ``MEDIA_DTLS_CERTIFICATE_ROTATION`` seconds after
it was made (on the next session: no timer), well within the 30 days aiortc's certificates are
valid.

aiortc 1.16 takes no certificate from its caller: ``RTCPeerConnection.__init__`` generates one
(a new key, about 0.2 ms) with ``RTCCertificate.generateCertificate()``, the name its module
imported. ``install()`` puts ``SharedCertificate`` under that name, process-wide, which gives the
certificate of the ``sharing(certificate)`` block the peer connection is made in, and generates
a new one as aiortc would outside such a block. ``tests/service/unit/test_certificates.py`` checks
that the answer's fingerprint and the DTLS handshake then use the shared certificate, and fails
loudly if an aiortc upgrade generates its certificate another way.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiortc.rtcpeerconnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint

_shared: contextvars.ContextVar[RTCCertificate | None] = contextvars.ContextVar("shared_certificate", default=None)


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


class SharedCertificate:
    """Stands in for ``RTCCertificate`` in aiortc's peer connection module once ``install()`` has
    run: the one thing that module does with it is ``generateCertificate()``."""

    @staticmethod
    def generateCertificate() -> RTCCertificate:
        shared = _shared.get()
        return RTCCertificate.generateCertificate() if shared is None else shared


def install() -> None:
    """Make the peer connections created inside ``sharing`` use its certificate (process-wide;
    outside such a block aiortc's behaviour is unchanged)."""
    setattr(aiortc.rtcpeerconnection, "RTCCertificate", SharedCertificate)  # noqa: B010 (not exported)


def is_installed() -> bool:
    return getattr(aiortc.rtcpeerconnection, "RTCCertificate", None) is SharedCertificate


@contextlib.contextmanager
def sharing(certificate: RTCCertificate) -> Iterator[None]:
    """Peer connections created in this block use ``certificate`` for their DTLS transports."""
    if not is_installed():
        raise RuntimeError("certificates.install() has not run: aiortc would generate its own certificate")
    token = _shared.set(certificate)
    try:
        yield
    finally:
        _shared.reset(token)
