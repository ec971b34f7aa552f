"""Forwarding RTP packet by packet, as plain logic: read a received packet, unwrap a
retransmission, and rewrite the packet as the sender's own (``relay.py`` is the aiortc glue).

A forwarded packet keeps its payload byte for byte (the codec's own packetization, so nothing is
depacketized, reassembled or packetized again) and gets the sender's header: its SSRC, the payload
type the sender negotiated for the same codec, and sequence numbers and timestamps moved by fixed
offsets from a random origin. Offsets, not counters: a packet lost on the way in leaves the same
gap on the way out, so the viewer asks for it (NACK) and a retransmission, forwarded late, lands
in its place. The header extensions are the sender's too: its MID, its send time (abs-send-time,
which the viewer's bandwidth estimate reads), and the audio level as received.

A retransmission (RFC 4588) is forwarded as the packet it repairs; a padding-only one (a sender's
bandwidth probe) is not forwarded at all. When the media SSRC changes the offsets are rebased, so
the viewer sees one continuous stream, and the caller asks for a keyframe.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

RTP_VERSION = 2
#: The fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
HEADER = struct.Struct("!BBHII")
#: RFC 8285's one-byte header extension form, the one WebRTC peers send and aiortc writes.
ONE_BYTE_PROFILE = 0xBEDE
#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2_208_988_800


@dataclass(slots=True)  # not frozen: made per packet, and a frozen one's __init__ costs twice as much
class Packet:
    """What forwarding reads of a received RTP packet (the names are aiortc's, so that its receive
    statistics and NACK generator take one). ``payload`` is without padding; ``audio_level`` is the
    extension's one byte (V and level), when the receiver negotiated it and the packet carries it."""

    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes
    padding: int = 0
    audio_level: int | None = None


def read(data: bytes, audio_level_id: int | None = None) -> Packet | None:
    """The packet in ``data`` (decrypted RTP), or None when it is not one."""
    if len(data) < HEADER.size or data[0] >> 6 != RTP_VERSION:
        return None
    first, second, sequence_number, timestamp, ssrc = HEADER.unpack_from(data)
    start = HEADER.size + 4 * (first & 0x0F)  # past the CSRCs, which forwarding does not keep
    audio_level = None
    if first & 0x10:
        if len(data) < start + 4:
            return None
        profile, words = struct.unpack_from("!HH", data, start)
        elements, start = start + 4, start + 4 + 4 * words
        if audio_level_id is not None and profile == ONE_BYTE_PROFILE and start <= len(data):
            audio_level = _one_byte_element(data, elements, start, audio_level_id)
    padding = data[-1] if first & 0x20 else 0
    end = len(data) - padding
    if end < start or (first & 0x20 and padding == 0):
        return None
    return Packet(
        bool(second & 0x80), second & 0x7F, sequence_number, timestamp, ssrc, data[start:end], padding, audio_level
    )


def _one_byte_element(data: bytes, position: int, end: int, wanted: int) -> int | None:
    while position < end:
        byte = data[position]
        if byte == 0:  # padding between elements
            position += 1
            continue
        element, length = byte >> 4, (byte & 0x0F) + 1
        if element == 15:  # reserved: stop reading (RFC 8285 4.2)
            return None
        if element == wanted and position + 1 < end:
            return data[position + 1]
        position += 1 + length
    return None


def unwrap_rtx(packet: Packet, payload_type: int, ssrc: int) -> Packet | None:
    """The packet a retransmission repairs (RFC 4588: the original sequence number, then the
    original payload), or None for one with no payload to repair (padding sent to probe)."""
    if len(packet.payload) <= 2:
        return None
    original = int.from_bytes(packet.payload[:2], "big")
    return replace(
        packet, payload_type=payload_type, sequence_number=original, ssrc=ssrc, payload=packet.payload[2:], padding=0
    )


#: What identifies a codec for forwarding (``codec_key``).
CodecKey = tuple[str, int, int, str | None]


def codec_key(mime_type: str, clock_rate: int, channels: int | None, parameters: Mapping[str, object]) -> CodecKey:
    """What must match for a received codec's packets to be sent as a negotiated one: the codec, its
    clock and channels, and for H.264 the packetization mode (the payload format itself)."""
    mime = mime_type.lower()
    mode = parameters.get("packetization-mode", "0") if mime == "video/h264" else None
    return mime, clock_rate, channels or 1, str(mode) if mode is not None else None


def payload_type_map(received: Iterable[tuple[int, CodecKey]], sent: Iterable[tuple[int, CodecKey]]) -> dict[int, int]:
    """Received payload type -> the sent one of the same codec (``codec_key``), the first negotiated."""
    by_key: dict[CodecKey, int] = {}
    for payload_type, key in sent:
        by_key.setdefault(key, payload_type)
    return {payload_type: by_key[key] for payload_type, key in received if key in by_key}


def ntp_time(unix_time: float) -> int:
    """A Unix time as a 64-bit NTP timestamp, as RTCP sender reports and abs-send-time use."""
    return int((unix_time + NTP_UNIX_OFFSET) * (1 << 32))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What the sender negotiated: its SSRC, the payload type it sends for each received one (the
    same codec; a received payload type missing here is not forwarded), and its header extension
    IDs, with the MID it writes."""

    ssrc: int
    payload_types: dict[int, int]
    mid: str | None = None
    mid_id: int | None = None
    abs_send_time_id: int | None = None
    audio_level_id: int | None = None


@dataclass(slots=True)
class Rewritten:
    """A packet as the sender sends it: ``data`` (RTP, unencrypted) with ``sequence_number`` and
    ``timestamp``; ``payload_size`` is what RTCP sender reports count; ``new_source`` says the media
    SSRC changed with this packet (the viewer needs a keyframe of the new one)."""

    data: bytes
    sequence_number: int
    timestamp: int
    payload_size: int
    new_source: bool


class Rewriter:
    """Rewrites one received stream's packets as one sender's."""

    def __init__(self, outgoing: Outgoing, *, sequence_origin: int, timestamp_origin: int) -> None:
        self.outgoing = outgoing
        self.source: int | None = None  # the received media SSRC being forwarded
        self._sequence_offset = 0
        self._timestamp_offset = 0
        self._last_sequence = sequence_origin - 1
        self._last_timestamp = (timestamp_origin - 1) & 0xFFFFFFFF
        mid = b""
        if outgoing.mid is not None and outgoing.mid_id is not None and 0 < len(outgoing.mid.encode()) <= 16:
            encoded = outgoing.mid.encode()
            mid = bytes([outgoing.mid_id << 4 | (len(encoded) - 1)]) + encoded
        self._mid_element = mid
        self._abs_send_time = None if outgoing.abs_send_time_id is None else bytes([outgoing.abs_send_time_id << 4 | 2])
        self._audio_level = None if outgoing.audio_level_id is None else bytes([outgoing.audio_level_id << 4])
        # The extension block's header and MID, and its padding, without and with an audio level.
        self._blocks = (self._block(level=False), self._block(level=True))

    def _block(self, *, level: bool) -> tuple[bytes, bytes] | None:
        size = len(self._mid_element) + (4 if self._abs_send_time else 0) + (2 if level and self._audio_level else 0)
        if not size:
            return None
        padding = -size % 4
        return struct.pack("!HH", ONE_BYTE_PROFILE, (size + padding) // 4) + self._mid_element, bytes(padding)

    def rewrite(self, packet: Packet, ntp: int) -> Rewritten | None:
        """``packet`` (a media packet: retransmissions unwrapped) as the sender's, stamped with the
        send time ``ntp``; None when the sender has no payload type for its codec."""
        payload_type = self.outgoing.payload_types.get(packet.payload_type)
        if payload_type is None:
            return None
        new_source = packet.ssrc != self.source
        if new_source:
            self._rebase(packet)
        sequence_number = (packet.sequence_number + self._sequence_offset) & 0xFFFF
        timestamp = (packet.timestamp + self._timestamp_offset) & 0xFFFFFFFF
        if (sequence_number - self._last_sequence) & 0xFFFF < 0x8000:  # newer: RFC 3550's wrap-around order
            self._last_sequence, self._last_timestamp = sequence_number, timestamp
        level = packet.audio_level if self._audio_level is not None else None
        block = self._blocks[level is not None]
        first = 0x80 | (0x10 if block else 0) | (0x20 if packet.padding else 0)
        second = (0x80 if packet.marker else 0) | payload_type
        parts = [HEADER.pack(first, second, sequence_number, timestamp, self.outgoing.ssrc)]
        if block is not None:
            parts.append(block[0])
            if self._abs_send_time is not None:
                parts += (self._abs_send_time, ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big"))
            if level is not None and self._audio_level is not None:
                parts += (self._audio_level, bytes((level,)))
            parts.append(block[1])
        parts.append(packet.payload)
        if packet.padding:
            parts += (bytes(packet.padding - 1), bytes((packet.padding,)))
        return Rewritten(b"".join(parts), sequence_number, timestamp, len(packet.payload), new_source)

    def _rebase(self, packet: Packet) -> None:
        """Continue the sent stream where it is with the new source's next packet."""
        self.source = packet.ssrc
        self._sequence_offset = (self._last_sequence + 1 - packet.sequence_number) & 0xFFFF
        self._timestamp_offset = (self._last_timestamp + 1 - packet.timestamp) & 0xFFFFFFFF
