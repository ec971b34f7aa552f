"""The DTLS role the service takes: the server whenever the offer lets it choose.

RFC 8842 lets the answerer of an ``a=setup:actpass`` offer pick either role. aiortc always picks
``active`` (DTLS client), and as a client it offers only ECDHE-ECDSA cipher suites: a peer whose
certificate is RSA (GStreamer's webrtcbin makes one) then has no suite in common and the handshake
fails after ICE has connected. As the DTLS server with its ECDSA certificate, aiortc chooses the
suite from what the client offers, and every WebRTC client offers ECDHE-ECDSA: browsers negotiate
what they negotiated before (only who sends the ClientHello changes), and RSA-certificate peers
connect too. An offer that says ``active`` or ``passive`` leaves no choice and is answered as
aiortc answers it (``passive`` or ``active``).

The hook is public API only: the answer from ``createAnswer()`` is rewritten before it is given to
``setLocalDescription()``, which takes each transport's DTLS role from the answer's ``a=setup``
(``tests/service/unit/test_dtls.py`` checks that aiortc still does, and fails loudly if not).
"""

from __future__ import annotations

import re

SETUP = re.compile(r"^a=setup:(\S+)\s*$")


def offered_setups(offer_sdp: str) -> list[str | None]:
    """The ``a=setup`` value of each media section of an offer, in order; a section without one
    takes the session-level value (None when there is none)."""
    session: str | None = None
    sections: list[str | None] = []
    for line in offer_sdp.splitlines():
        if line.startswith("m="):
            sections.append(None)
        elif match := SETUP.match(line.strip()):
            if sections:
                sections[-1] = match.group(1)
            else:
                session = match.group(1)
    return [value or session for value in sections]


def prefer_server(offer_sdp: str, answer_sdp: str) -> str:
    """``answer_sdp`` with ``a=setup:passive`` in every media section whose offer said ``actpass``;
    every other line, and every other section, unchanged."""
    setups = offered_setups(offer_sdp)
    out: list[str] = []
    index = -1
    for line in answer_sdp.split("\r\n"):
        if line.startswith("m="):
            index += 1
        elif line == "a=setup:active" and 0 <= index < len(setups) and setups[index] == "actpass":
            line = "a=setup:passive"
        out.append(line)
    return "\r\n".join(out)
