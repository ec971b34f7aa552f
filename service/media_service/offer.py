"""An offer's shape and size, checked before aiortc sees it.

aiortc parses whatever it is given and pays for it: an offer of 640 m-sections costs half a second
of event loop and a 616 KB answer, and every audio/video m-section of a connected session gets an
OS thread. It also crashes (``AttributeError``, ``StopIteration``) on offers that are only slightly
wrong: a section without ``a=mid``, two sections with one mid, an ``a=fmtp`` or ``apt=`` naming a
payload type without ``a=rtpmap``, a BUNDLE of unknown mids, a section without ``a=setup``. So
the offer is read here first, in one linear pass with no I/O: every bound is checked (bytes,
m-sections, audio/video sections, codecs per section, attribute lines) and the consistency aiortc
assumes without checking. A refusal says which bound or rule (naming the setting), and becomes
``bad_request``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A payload type in an m= line, an a=rtpmap or an a=fmtp (RFC 8866: 0..127 for RTP).
_PAYLOAD_TYPE = re.compile(r"\d{1,3}")
_MID = re.compile(r"[A-Za-z0-9_\-.~+/=]{1,32}")  # RFC 5888 token; short, as every real stack sends
_APT = re.compile(r"(?:^|;)\s*apt=(\d{1,3})\s*(?:;|$)")


class OfferRefused(ValueError):
    """The offer is out of bounds or inconsistent; the message says which."""


@dataclass(frozen=True)
class OfferLimits:
    max_bytes: int
    max_sections: int
    max_tracks: int  # audio and video sections: each may become an OS thread in aiortc
    max_codecs: int  # payload types of one section
    max_attributes: int  # a= lines of the whole offer


@dataclass(frozen=True)
class OfferShape:
    sections: int
    tracks: int  # audio and video sections
    bundled: bool = True  # one transport for every section: one section, or one BUNDLE group of all


@dataclass
class _Section:
    kind: str
    formats: list[str]
    mid: str | None = None
    mids: int = 0
    setup: bool = False
    fingerprint: bool = False
    ice: set[str] | None = None
    rtpmap: set[str] = field(default_factory=set)
    apts: list[str] = field(default_factory=list)
    fmtps: list[str] = field(default_factory=list)


def check_offer(sdp: str, limits: OfferLimits) -> OfferShape:
    """The offer's shape, or OfferRefused naming the bound (setting) or the rule it breaks."""
    size = len(sdp.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise OfferRefused(f"offer of {size} bytes is over MEDIA_MAX_OFFER_BYTES ({limits.max_bytes})")
    # Split as aiortc does (str.splitlines: also at \x1c-\x1e, \x85, \u2028...), or a section hidden
    # behind such a separator would be one line here and a section there.
    lines = sdp.strip().splitlines()
    if not lines or lines[0].strip() != "v=0":
        raise OfferRefused("an SDP starts with 'v=0'")
    if not any(line.startswith("m=") for line in lines):
        raise OfferRefused("no media section (m=) to answer")
    sections: list[_Section] = []
    attributes = 0
    session_setup = session_fingerprint = False
    session_ice: set[str] = set()
    bundles: list[list[str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) < 2 or line[1] != "=":
            if not line.strip():
                continue
            raise OfferRefused(f"line {number} is not 'x=value'")
        kind, value = line[0], line[2:]
        if kind == "m":
            if len(sections) >= limits.max_sections:
                raise OfferRefused(f"more than MEDIA_MAX_OFFER_SECTIONS ({limits.max_sections}) media sections")
            parts = value.split()
            if len(parts) < 4:
                raise OfferRefused(f"line {number}: an m= line is 'media port proto format...'")
            section = _Section(parts[0], parts[3:])
            if section.kind not in ("audio", "video", "application"):
                raise OfferRefused(f"line {number}: media is audio, video or application")
            if section.kind in ("audio", "video"):
                if len(section.formats) > limits.max_codecs:
                    raise OfferRefused(
                        f"{section.kind} section {len(sections)} offers {len(section.formats)} payload types, "
                        f"over MEDIA_MAX_OFFER_CODECS ({limits.max_codecs})"
                    )
                if not all(_PAYLOAD_TYPE.fullmatch(f) and int(f) <= 127 for f in section.formats):
                    raise OfferRefused(f"line {number}: payload types are integers from 0 to 127")
            sections.append(section)
            continue
        if kind != "a":
            continue
        attributes += 1
        if attributes > limits.max_attributes:
            raise OfferRefused(f"more than MEDIA_MAX_OFFER_ATTRIBUTES ({limits.max_attributes}) attribute lines")
        name, _, argument = value.partition(":")
        current = sections[-1] if sections else None
        if name == "setup":
            if current is None:
                session_setup = True
            else:
                current.setup = True
            if argument not in ("active", "passive", "actpass", "holdconn"):
                raise OfferRefused(f"line {number}: a=setup is active, passive, actpass or holdconn")
        elif name == "fingerprint":
            if len(argument.split()) != 2:
                raise OfferRefused(f"line {number}: a=fingerprint is 'algorithm value'")
            if current is None:
                session_fingerprint = True
            else:
                current.fingerprint = True
        elif name in ("ice-ufrag", "ice-pwd"):
            if current is None:
                session_ice.add(name)
            else:
                current.ice = (current.ice or set()) | {name}
        elif current is None:
            if name == "group" and argument.split()[:1] == ["BUNDLE"]:
                bundles.append(argument.split()[1:])
            continue
        elif name == "mid":
            current.mid, current.mids = argument, current.mids + 1
        elif name == "rtpmap":
            payload_type, _, encoding = argument.partition(" ")
            if not _PAYLOAD_TYPE.fullmatch(payload_type) or "/" not in encoding:
                raise OfferRefused(f"line {number}: a=rtpmap is 'payload-type name/clock-rate'")
            current.rtpmap.add(payload_type)
        elif name == "fmtp":
            payload_type, _, parameters = argument.partition(" ")
            current.fmtps.append(payload_type)
            apt = _APT.search(parameters)
            if apt is not None:
                current.apts.append(apt.group(1))
    tracks = sum(1 for s in sections if s.kind in ("audio", "video"))
    if tracks > limits.max_tracks:
        raise OfferRefused(f"{tracks} audio/video sections, over MEDIA_MAX_OFFER_TRACKS ({limits.max_tracks})")
    mids: set[str] = set()
    for index, section in enumerate(sections):
        if section.mids != 1 or section.mid is None or not _MID.fullmatch(section.mid):
            raise OfferRefused(f"media section {index} needs exactly one a=mid with a short token")
        if section.mid in mids:
            raise OfferRefused(f"media section {index} repeats mid {section.mid!r}")
        mids.add(section.mid)
        if len(session_ice | (section.ice or set())) != 2:
            raise OfferRefused(f"media section {index}: ICE username fragment or password is missing")
        if not (section.setup or session_setup) or not (section.fingerprint or session_fingerprint):
            raise OfferRefused(f"media section {index} needs a=setup and a=fingerprint (DTLS)")
        for payload_type in (*section.fmtps, *section.apts):
            if payload_type not in section.rtpmap:
                raise OfferRefused(f"media section {index}: payload type {payload_type[:8]!r} has no a=rtpmap")
    for bundle in bundles:
        unknown = [mid for mid in bundle if mid not in mids]
        if unknown:  # aiortc would bundle onto a transport that does not exist
            raise OfferRefused(f"a=group:BUNDLE names {unknown[0][:32]!r}, the mid of no media section")
    bundled = len(sections) == 1 or any(mids <= set(bundle) for bundle in bundles)
    return OfferShape(len(sections), tracks, bundled)
