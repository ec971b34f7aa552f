"""Every offer aiortc cannot handle is ``bad_request``, never ``internal``: random edits of real
offers (the corpus in sdp_corpus/, made by aiortc) sent to the real process, with hypothesis.

Bounded: a fixed number of examples over one connection, no shrinking database, and the process
must end the run with no ERROR in its log and its threads back near idle.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.service.test_bounds import threads_of
from tests.support.media_process import MediaProcess, auth_header, media_service

CORPUS = sorted((Path(__file__).parent / "sdp_corpus").glob("*.sdp"))
OFFERS = [path.read_bytes().decode() for path in CORPUS]  # CRLF kept, as sent
#: Tokens an edit puts in place of another or inserts: numbers at the edges, separators, the names
#: of attributes that refer to each other (mid, rtpmap, fmtp, apt, setup, BUNDLE).
TOKENS = [
    "", "0", "-1", "127", "128", "255", "4294967296", "x", ":", "/", " ", "=", ";", "apt=1", "a=mid:0",
    "a=setup:actpass", "a=rtpmap:96 rtx/90000", "a=fmtp:120 apt=121", "m=video 9 UDP/TLS/RTP/SAVPF 96",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "a=group:BUNDLE 0 1 2 3", "\x00", "é",
]  # fmt: skip


#: What the fuzzed offers got: both kinds must be common, or the edits miss aiortc's paths.
OUTCOMES: collections.Counter[str] = collections.Counter()


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(OFFERS)).split("\r\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        line, edit = lines[i], draw(st.sampled_from(["delete", "duplicate", "token", "insert", "cut", "move"]))
        if edit == "delete":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif edit == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        elif edit == "token":
            words = line.split(" ")
            words[draw(st.integers(0, len(words) - 1))] = draw(st.sampled_from(TOKENS))
            lines[i] = " ".join(words)
        elif edit == "insert":
            lines.insert(i, draw(st.sampled_from(TOKENS)))
        elif line:
            j = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:j] + line[j + 1 :]
        if not lines:
            lines = [""]
    return "\r\n".join(lines)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaProcess]:
    # One user sending offers as fast as they are answered: the rate limits are not under test.
    env = {"MEDIA_WS_RATE_LIMIT": "10000", "MEDIA_OFFER_RATE_PER_USER": "10000", "MEDIA_LOG_LEVEL": "info"}
    with media_service(tmp_path_factory.mktemp("fuzz"), env=env) as media:
        yield media


@pytest.fixture(scope="module")
def ws(media: MediaProcess) -> Iterator[ClientConnection]:
    with connect(f"{media.ws_url}?user=alice&device=fuzz", additional_headers=auth_header()) as ws:
        yield ws


def exchange(ws: ClientConnection, message: dict[str, Any], *types: str) -> dict[str, Any]:
    ws.send(json.dumps(message))
    while True:
        reply = json.loads(ws.recv(timeout=20))
        if reply["type"] in types:
            return reply


def answer_or_bad_request(ws: ClientConnection, sdp: str) -> str:
    reply = exchange(ws, {"type": "offer", "sdp": sdp}, "answer", "error")
    if reply["type"] == "answer":
        exchange(ws, {"type": "bye", "session": reply["session"]}, "bye")
        return "answer"
    assert reply["code"] == "bad_request", (reply, sdp[:300])
    return "bad_request"


def test_the_corpus_is_answered(media: MediaProcess, ws: ClientConnection) -> None:
    for offer in OFFERS:
        assert answer_or_bad_request(ws, offer) == "answer"


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sdp=mutated_offers())
def test_mutated_offers_are_answered_or_bad_request(media: MediaProcess, ws: ClientConnection, sdp: str) -> None:
    OUTCOMES[answer_or_bad_request(ws, sdp)] += 1


def test_the_fuzzed_process_is_healthy_and_quiet(media: MediaProcess, ws: ClientConnection) -> None:
    """After the run: no traceback logged, sessions gone, threads near idle, /health prompt."""
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    if OUTCOMES:  # after the fuzz run (not when this test runs alone)
        print(dict(OUTCOMES), media.log().count("offer_not_answerable"))
        assert OUTCOMES["answer"] >= 25 and OUTCOMES["bad_request"] >= 25, OUTCOMES
    errors = [line for line in media.log().splitlines() if '"level": "error"' in line or "Traceback" in line]
    assert not errors, errors[:3]
    assert threads_of(media.proc.pid) < 40
    started = time.monotonic()
    assert httpx.get(f"{media.admin_url}/health", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0
