"""Forwarding's plain RTP logic (``rtp_forwarding``): packets made and read back by aiortc's own
``RtpPacket``, so that what is read and written is what a WebRTC peer sends and accepts."""

from __future__ import annotations

import itertools

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from media_service.rtp_forwarding import (
    Outgoing,
    Packet,
    Rewriter,
    codec_key,
    ntp_time,
    payload_type_map,
    read,
    unwrap_rtx,
)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def extensions_map(**ids: int) -> HeaderExtensionsMap:
    uris = {"mid": MID_URI, "abs_send_time": ABS_SEND_TIME_URI, "audio_level": AUDIO_LEVEL_URI}
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=uris[n]) for n, i in ids.items()])
    )
    return extensions


RECEIVED = extensions_map(mid=4, abs_send_time=5, audio_level=6)  # the peer's IDs
SENT = extensions_map(mid=1, abs_send_time=3, audio_level=2)  # the service's


def peer_packet(
    sequence: int = 100, timestamp: int = 9000, *, payload: bytes = b"\x10payload", ssrc: int = 0xAAAA, **fields: object
) -> RtpPacket:
    packet = RtpPacket(payload_type=97, sequence_number=sequence, timestamp=timestamp, ssrc=ssrc, marker=1)
    packet.payload = payload
    packet.extensions.mid = "0"
    packet.extensions.abs_send_time = 0x123456
    for name, value in fields.items():
        setattr(packet, name, value)
    return packet


def outgoing(**changes: object) -> Outgoing:
    fields: dict[str, object] = {
        "ssrc": 0xBBBB,
        "payload_types": {97: 102},
        "mid": "video0",
        "mid_id": 1,
        "abs_send_time_id": 3,
    }
    fields.update(changes)
    return Outgoing(**fields)  # type: ignore[arg-type]


def rewriter(**changes: object) -> Rewriter:
    return Rewriter(outgoing(**changes), sequence_origin=65530, timestamp_origin=0xFFFFFF00)


# ----------------------------------------------------------------------------- reading


def test_a_peers_packet_reads_back_field_for_field() -> None:
    sent = peer_packet(csrc=[1, 2], padding_size=7)
    sent.extensions.audio_level = (True, 42)  # aiortc's (voice, level in -dBov)
    packet = read(sent.serialize(RECEIVED), audio_level_id=6)
    assert packet == Packet(True, 97, 100, 9000, 0xAAAA, b"\x10payload", 7, 0x80 | 42)


def test_the_audio_level_is_read_only_when_negotiated() -> None:
    sent = peer_packet()
    sent.extensions.audio_level = (False, 10)
    data = sent.serialize(RECEIVED)
    assert read(data, audio_level_id=6) is not None and read(data, audio_level_id=6).audio_level == 10  # type: ignore[union-attr]
    assert read(data).audio_level is None  # type: ignore[union-attr]
    assert read(data, audio_level_id=9).audio_level is None  # type: ignore[union-attr]


def test_what_is_not_an_rtp_packet_reads_as_none() -> None:
    good = peer_packet().serialize(RECEIVED)
    assert read(good[:11]) is None  # shorter than a header
    assert read(bytes([0x40]) + good[1:]) is None  # version 1
    assert read(bytes([good[0] | 0x0F]) + good[1:20]) is None  # 15 CSRCs that are not there
    padded = bytes([good[0] | 0x20]) + good[1:]
    assert read(padded[:-1] + b"\x00") is None  # padding of 0 bytes
    assert read(padded[:-1] + b"\xff") is None  # more padding than packet
    extension_words = good[:14] + b"\x40\x00" + good[16:]  # an extension block longer than the packet
    assert read(extension_words) is None


def test_a_retransmission_unwraps_to_the_packet_it_repairs() -> None:
    rtx = Packet(False, 98, 7, 9000, 0xCCCC, b"\x01\x02" + b"original", 3)
    assert unwrap_rtx(rtx, 97, 0xAAAA) == Packet(False, 97, 0x0102, 9000, 0xAAAA, b"original", 0)
    assert unwrap_rtx(Packet(False, 98, 8, 9000, 0xCCCC, b"\x01\x02", 200), 97, 0xAAAA) is None  # a probe


def test_ntp_time_counts_from_1900_in_32_bit_fractions() -> None:
    assert ntp_time(0.5) == (2_208_988_800 << 32) + (1 << 31)


# ----------------------------------------------------------------------------- codecs


def test_payload_types_map_by_codec_and_h264_packetization_mode() -> None:
    h264 = {"packetization-mode": "1", "profile-level-id": "42e01f"}
    received = [
        (96, codec_key("audio/opus", 48000, 2, {})),
        (100, codec_key("video/VP8", 90000, None, {})),
        (102, codec_key("video/H264", 90000, None, h264)),
        (104, codec_key("video/H264", 90000, None, {"packetization-mode": "0"})),
        (106, codec_key("video/VP9", 90000, None, {})),
    ]
    sent = [
        (111, codec_key("audio/OPUS", 48000, 2, {})),
        (97, codec_key("video/vp8", 90000, None, {})),
        (99, codec_key("video/H264", 90000, None, {**h264, "profile-level-id": "42001f"})),
        (101, codec_key("video/H264", 90000, None, h264)),
    ]
    # The first negotiated of equals; mode 0 has no match (a mode-1 viewer could not take it); nor VP9.
    assert payload_type_map(received, sent) == {96: 111, 100: 97, 102: 99}


# ----------------------------------------------------------------------------- rewriting


def test_a_packet_becomes_the_senders_with_its_payload_untouched() -> None:
    source = peer_packet(sequence=100, timestamp=9000)
    rewritten = rewriter().rewrite(read(source.serialize(RECEIVED)), ntp_time(1000.25))  # type: ignore[arg-type]
    assert rewritten is not None and rewritten.new_source
    out = RtpPacket.parse(rewritten.data, SENT)
    assert (out.ssrc, out.payload_type, out.marker, out.payload) == (0xBBBB, 102, 1, b"\x10payload")
    assert (
        (out.sequence_number, out.timestamp) == (65530, 0xFFFFFF00) == (rewritten.sequence_number, rewritten.timestamp)
    )
    assert out.extensions.mid == "video0"
    assert out.extensions.abs_send_time == (ntp_time(1000.25) >> 14) & 0xFFFFFF  # sent now, not when the peer did
    assert out.csrc == [] and out.padding_size == 0
    assert rewritten.payload_size == len(b"\x10payload")


def test_gaps_and_order_are_kept_across_the_wrap_around() -> None:
    rewrite = rewriter()
    sent = []
    for sequence, timestamp in [(100, 9000), (101, 9000), (103, 12000), (102, 9000), (110, 36000)]:
        rewritten = rewrite.rewrite(read(peer_packet(sequence, timestamp).serialize(RECEIVED)), 0)  # type: ignore[arg-type]
        assert rewritten is not None
        sent.append((rewritten.sequence_number, rewritten.timestamp, rewritten.new_source))
    assert sent == [
        (65530, 0xFFFFFF00, True),
        (65531, 0xFFFFFF00, False),
        (65533, 0xFFFFFF00 + 3000 - 2**32, False),  # the gap stays: the viewer NACKs it
        (65532, 0xFFFFFF00, False),  # the retransmission lands in it
        (4, 0xFFFFFF00 + 27000 - 2**32, False),
    ]


@given(st.lists(st.integers(0, 300), min_size=1, max_size=40), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_sequence_differences_are_kept_whatever_the_origins(steps: list[int], first: int, origin: int) -> None:
    rewrite = Rewriter(outgoing(), sequence_origin=origin, timestamp_origin=0)
    received, sent = [], []
    sequence = first
    for step in steps:
        sequence = (sequence + step) & 0xFFFF
        rewritten = rewrite.rewrite(Packet(False, 97, sequence, 0, 1, b"x"), 0)
        assert rewritten is not None
        received.append(sequence)
        sent.append(rewritten.sequence_number)
    assert sent[0] == origin
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(sent)] == [
        (b - a) & 0xFFFF for a, b in itertools.pairwise(received)
    ]


def test_a_new_source_continues_the_sent_stream() -> None:
    rewrite = rewriter()
    rewrite.rewrite(Packet(False, 97, 100, 9000, 0xAAAA, b"x"), 0)
    rewrite.rewrite(Packet(False, 97, 101, 12000, 0xAAAA, b"x"), 0)
    switched = rewrite.rewrite(Packet(False, 97, 5000, 777, 0xDDDD, b"x"), 0)
    assert switched is not None and switched.new_source
    assert (switched.sequence_number, switched.timestamp) == (65532, (0xFFFFFF00 + 3000 + 1) & 0xFFFFFFFF)
    after = rewrite.rewrite(Packet(False, 97, 5001, 3777, 0xDDDD, b"x"), 0)
    assert after is not None and not after.new_source and after.sequence_number == 65533
    assert rewrite.source == 0xDDDD


def test_a_codec_the_sender_did_not_negotiate_is_not_forwarded() -> None:
    rewrite = rewriter()
    assert rewrite.rewrite(Packet(False, 96, 1, 0, 0xAAAA, b"x"), 0) is None
    assert rewrite.source is None  # and it does not count as the source


def test_audio_level_is_copied_and_padding_only_packets_keep_their_place() -> None:
    rewrite = rewriter(abs_send_time_id=None, audio_level_id=2)
    level = rewrite.rewrite(Packet(True, 97, 1, 960, 0xAAAA, b"opus", 0, 0x80 | 30), 0)
    assert level is not None
    out = RtpPacket.parse(level.data, SENT)
    assert out.extensions.audio_level == (True, 30) and out.extensions.abs_send_time is None
    padding = rewrite.rewrite(Packet(False, 97, 2, 960, 0xAAAA, b"", 16), 0)
    assert padding is not None and padding.payload_size == 0
    out = RtpPacket.parse(padding.data, SENT)
    assert (out.sequence_number, out.payload, out.padding_size) == (65531, b"", 16)


def test_without_negotiated_extensions_no_extension_block_is_written() -> None:
    rewritten = rewriter(mid_id=None, abs_send_time_id=None).rewrite(Packet(False, 97, 1, 0, 0xAAAA, b"x"), 0)
    assert rewritten is not None and rewritten.data[0] == 0x80 and len(rewritten.data) == 12 + 1
