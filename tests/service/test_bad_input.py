"""Bad input gets a clear error and loses nothing: the connection stays usable, no session,
task or socket is left behind."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.media_process import MediaProcess, auth_header, media_service
from tests.support.peers import SignalingClient, make_peer, offer_sdp, only_codec, open_session

CANDIDATE = "candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    env = {"MEDIA_WS_MAX_MESSAGE_BYTES": "8192", "MEDIA_WS_RATE_LIMIT": "20", "MEDIA_WHIP_MAX_BODY_BYTES": "8192"}
    with media_service(tmp_path_factory.mktemp("bad"), env=env) as media:
        yield media


@pytest.fixture
async def client(media: MediaProcess, no_leaks: None):
    client = await SignalingClient.connect(media.ws_url)
    yield client
    await client.close()
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    media.poll_metric("media_ws_clients", lambda v: v == 0)


async def still_usable(client: SignalingClient) -> None:
    await client.send({"type": "ping"})
    assert await client.recv("pong") == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "JSON object with a string 'type'"),
        ('{"sdp": "x"}', "JSON object with a string 'type'"),
        ('{"type": 7}', "JSON object with a string 'type'"),
        ('{"type": "subscribe"}', "unknown message type 'subscribe'"),
        ('{"type": "offer"}', "non-empty 'sdp'"),
        ('{"type": "offer", "sdp": 42}', "non-empty 'sdp'"),
        ('{"type": "candidate"}', "needs a 'session'"),
        ('{"type": "bye"}', "needs a 'session'"),
        ('{"type": "message", "data": 1}', "non-empty 'to'"),
        ('{"type": "ping", "n": ' + "9" * 5000 + "}", "malformed JSON"),  # Python refuses > 4300 digits
        ("[" * 3000 + "]" * 3000, "malformed JSON"),  # deeper than the parser recurses
    ],
)
async def test_malformed_messages_get_bad_request(client: SignalingClient, frame: str, fragment: str) -> None:
    await client.send(frame)
    error = await client.recv("error")
    assert error["code"] == "bad_request"
    assert fragment in error["message"]
    await still_usable(client)


NO_ICE_CREDENTIALS = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
)


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        ("hello", "starts with 'v=0'"),
        ("v=0\r\nthis is not sdp\r\n", "no media section"),
        ("v=0\r\nm=video\r\n", "offer rejected"),  # aiortc's parser fails an assertion
        (NO_ICE_CREDENTIALS, "ICE username fragment or password is missing"),  # aiortc raises ValueError
    ],
)
async def test_sdp_that_aiortc_rejects(client: SignalingClient, media: MediaProcess, sdp: str, reason: str) -> None:
    created = media.metric("media_sessions_created_total")
    await client.send({"type": "offer", "sdp": sdp})
    error = await client.recv("error")
    assert error["code"] == "bad_request"
    assert error["message"].startswith("offer rejected") and reason in error["message"]
    assert media.metric("media_sessions_created_total") == created
    await still_usable(client)


async def test_binary_frames_are_refused(client: SignalingClient) -> None:
    await client.ws.send(b"\x00\x01")
    assert (await client.recv("error"))["code"] == "bad_request"
    await still_usable(client)


async def test_binary_floods_are_rate_limited_too(client: SignalingClient) -> None:
    for _ in range(100):
        await client.ws.send(b"\x00")
    codes: list[str] = []
    while "rate_limited" not in codes:
        codes.append((await client.recv("error", timeout=10))["code"])
    # The burst of 40 is answered (a token or two may refill while the flood is sent), then the
    # rest is dropped with a single rate_limited error.
    assert 40 <= codes.count("bad_request") <= 42
    await asyncio.sleep(0.2)  # let the bucket refill a few tokens
    await still_usable(client)


async def test_offer_with_a_codec_aiortc_lacks(client: SignalingClient, media: MediaProcess) -> None:
    peer = make_peer(video=True, data=False)
    sdp = only_codec((await offer_sdp(peer))[0], "AV1")
    await client.send({"type": "offer", "sdp": sdp})
    error = await client.recv("error")
    assert error["code"] == "bad_request" and error["message"].startswith("offer rejected")
    async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
        response = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert response.headers["access-control-allow-origin"] == "*"
    await peer.close()


async def test_unknown_and_closed_sessions(client: SignalingClient) -> None:
    candidate = {"candidate": CANDIDATE.format(port=9), "sdpMid": "0", "sdpMLineIndex": 0}
    await client.send({"type": "candidate", "session": "nope", "candidate": candidate})
    error = await client.recv("error")
    assert (error["code"], error["session"]) == ("unknown_session", "nope")
    peer = await open_session(client)
    await client.send({"type": "bye", "session": peer.session})
    await client.recv("bye", session=peer.session)
    await client.send({"type": "candidate", "session": peer.session, "candidate": candidate})
    assert (await client.recv("error"))["code"] == "unknown_session"
    await client.send({"type": "bye", "session": peer.session})
    assert (await client.recv("error"))["code"] == "unknown_session"
    await peer.close()


async def test_sessions_of_other_connections_are_invisible(media: MediaProcess, client: SignalingClient) -> None:
    peer = await open_session(client)
    other = await SignalingClient.connect(media.ws_url, user="mallory")
    await other.send({"type": "bye", "session": peer.session})
    assert (await other.recv("error"))["code"] == "unknown_session"
    assert await peer.echo("still here") == "still here"
    await other.close()
    await peer.close()


@pytest.mark.parametrize(
    "candidate",
    [
        {"candidate": "candidate:garbage"},
        {"candidate": CANDIDATE.format(port=9)},  # neither sdpMid nor sdpMLineIndex
        {"candidate": CANDIDATE.format(port=9), "sdpMid": 0},
        {"candidate": CANDIDATE.format(port=9), "sdpMLineIndex": -1},
        {"candidate": CANDIDATE.format(port=9), "sdpMid": "nope"},  # no such media section
        {"candidate": CANDIDATE.format(port=9), "sdpMLineIndex": 7},
        "a string",
    ],
)
async def test_bad_candidates(client: SignalingClient, candidate: object) -> None:
    peer = await open_session(client)
    await client.send({"type": "candidate", "session": peer.session, "candidate": candidate})
    error = await client.recv("error")
    assert (error["code"], error["session"]) == ("bad_request", peer.session)
    assert await peer.echo("alive") == "alive"
    await peer.close()


async def test_ice_candidate_cap(client: SignalingClient, media: MediaProcess) -> None:
    rejected = media.metric("media_ice_candidates_rejected_total")
    peer = await open_session(client)
    for port in range(50):
        await client.send(
            {
                "type": "candidate",
                "session": peer.session,
                "candidate": {"candidate": CANDIDATE.format(port=40000 + port), "sdpMid": "0"},
            }
        )
        await asyncio.sleep(0.06)  # stay under the test's 20 messages/s rate limit
    await client.send(
        {
            "type": "candidate",
            "session": peer.session,
            "candidate": {"candidate": CANDIDATE.format(port=50000), "sdpMid": "0"},
        }
    )
    error = await client.recv("error")
    assert (error["code"], error["session"]) == ("ice_candidate_limit", peer.session)
    assert not [m for m in client.inbox if m["type"] == "error"], "the first 50 candidates must be accepted"
    assert media.metric("media_ice_candidates_rejected_total") == rejected + 1
    assert await peer.echo("the session lives on") == "the session lives on"
    await peer.close()


async def test_oversized_message_closes_with_1009(client: SignalingClient, media: MediaProcess) -> None:
    await client.send(json.dumps({"type": "message", "to": "x", "data": "y" * 10_000}))
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_message_flood_is_rate_limited(client: SignalingClient, media: MediaProcess) -> None:
    before = media.metric("media_ws_messages_rejected_total", {"code": "rate_limited"}) or 0
    for _ in range(200):
        await client.send({"type": "ping"})
    pongs, errors = 0, 0
    await client.send({"type": "ping"})
    while pongs + errors < 41:  # burst of 40 is answered, then at most one rate_limited error
        message = await client.recv(timeout=10)
        pongs += message["type"] == "pong"
        errors += message["type"] == "error"
        if message["type"] == "error":
            assert message["code"] == "rate_limited"
    assert 40 <= pongs <= 45 and errors == 1
    assert (media.metric("media_ws_messages_rejected_total", {"code": "rate_limited"}) or 0) - before >= 150
    await asyncio.sleep(0.2)  # the bucket refills at 20/s: wait for a few tokens, not for an event
    await still_usable(client)


async def test_offer_flood_is_capped_per_connection(client: SignalingClient) -> None:
    peers = [make_peer() for _ in range(9)]
    for peer in peers:
        await client.send({"type": "offer", "sdp": (await offer_sdp(peer))[0]})
        await asyncio.sleep(0.06)
    answers = [await client.recv("answer") for _ in range(8)]
    error = await client.recv("error")
    assert error["code"] == "session_limit"
    assert len({a["session"] for a in answers}) == 8
    for peer in peers:
        await peer.close()


async def test_message_to_offline_user(client: SignalingClient) -> None:
    await client.send({"type": "message", "to": "nobody", "data": "hi"})
    assert (await client.recv("error"))["code"] == "not_online"


async def test_relay_reaches_every_device_of_the_user(media: MediaProcess, client: SignalingClient) -> None:
    bob1 = await SignalingClient.connect(media.ws_url, user="bob", device="phone")
    bob2 = await SignalingClient.connect(media.ws_url, user="bob", device="laptop")
    await client.send({"type": "message", "to": "bob", "data": {"n": 1}})
    expected = {"type": "message", "from": {"user": "alice", "device": "d1"}, "data": {"n": 1}}
    assert await bob1.recv("message") == expected
    assert await bob2.recv("message") == expected
    await bob1.close()
    await bob2.close()


async def test_invalid_device_is_refused(media: MediaProcess, no_leaks: None) -> None:
    client = await SignalingClient.connect(media.ws_url, device="a%20b")
    assert (await client.recv("error"))["code"] == "bad_request"
    with pytest.raises(ConnectionClosed) as closed:
        await client.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_client_vanishing_mid_handshake_leaves_nothing(media: MediaProcess, no_leaks: None) -> None:
    for _ in range(5):
        client = await SignalingClient.connect(media.ws_url)
        peer = make_peer()
        await client.send({"type": "offer", "sdp": (await offer_sdp(peer))[0]})
        client.ws.transport.abort()  # gone without a close frame
        await peer.close()
    media.poll_metric("media_ws_clients", lambda v: v == 0)
    media.poll_metric("media_sessions_active", lambda v: v == 0)
    for state in ("live", "closing"):
        media.poll_metric("media_asyncio_tasks", lambda v: v == 0, labels={"owner": state}, timeout=30)


class TestWhipBadInput:
    async def test_wrong_content_type(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            response = await http.post("/whip", content="v=0", headers={"content-type": "text/plain"})
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported_media_type"

    async def test_oversized_body(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            response = await http.post("/whip", content="v" * 9000, headers={"content-type": "application/sdp"})
        assert response.status_code == 413

    async def test_rejected_sdp(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            response = await http.post("/whip", content="garbage", headers={"content-type": "application/sdp"})
        assert response.status_code == 400
        assert response.json()["error"] == "bad_request"

    async def test_unknown_resource(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            patched = await http.patch(
                "/whip/nope",
                content="a=end-of-candidates\r\n",
                headers={"content-type": "application/trickle-ice-sdpfrag"},
            )
            deleted = await http.delete("/whip/nope")
        assert (patched.status_code, deleted.status_code) == (404, 404)
        assert patched.json()["error"] == "unknown_session"

    async def test_admin_routes_are_not_public(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            for path in ("/metrics", "/health", "/ready", "/debug/tasks"):
                assert (await http.get(path)).status_code == 404
            assert (await http.post("/admin/drain")).status_code == 404

    @pytest.mark.parametrize(
        ("if_match", "body", "status", "code"),
        [
            ("abc", "a=end-of-candidates\r\n", 400, "bad_request"),  # not quoted
            ('"a", b', "a=end-of-candidates\r\n", 400, "bad_request"),
            ('W/"', "a=end-of-candidates\r\n", 400, "bad_request"),
            ("", "a=end-of-candidates\r\n", 400, "bad_request"),
            ("*", "a=mid:0\r\n", 400, "bad_request"),  # a restart without new credentials
            ("*", "a=ice-ufrag:ab\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", 400, "bad_request"),  # ufrag too short
            ("*", "a=ice-ufrag:abcd\r\na=ice-pwd:short\r\n", 400, "bad_request"),
            ("*", "a=ice-ufrag:ab!d\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", 400, "bad_request"),
            ("*", "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", 422, "ice_restart_unsupported"),
        ],
    )
    async def test_bad_conditional_patches_change_nothing(
        self, media: MediaProcess, if_match: str, body: str, status: int, code: str
    ) -> None:
        peer = make_peer()
        try:
            sdp, _ = await offer_sdp(peer, trickle=True)
            async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
                created = await http.post("/whip", content=sdp, headers={"content-type": "application/sdp"})
                location, fragment = created.headers["location"], {"content-type": "application/trickle-ice-sdpfrag"}
                refused = await http.patch(location, content=body, headers={**fragment, "if-match": if_match})
                assert (refused.status_code, refused.json()["error"]) == (status, code), refused.text
                assert refused.headers["access-control-allow-origin"] == "*"
                # Still the same ICE session, still trickling.
                ok = await http.patch(
                    location,
                    content=body if if_match != "*" else "a=end-of-candidates\r\n",
                    headers={**fragment, "if-match": created.headers["etag"]},
                )
                assert ok.status_code == 204, ok.text
                # Trickling ended with no candidate and the peer never answers: the session may
                # have failed and closed by now (404), or not yet (200). Either way it is gone after.
                assert (await http.delete(location)).status_code in (200, 404)
        finally:
            await peer.close()

    async def test_restart_on_an_unknown_session(self, media: MediaProcess) -> None:
        restart = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        headers = {"content-type": "application/trickle-ice-sdpfrag", "if-match": "*"}
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:
            response = await http.patch("/whip/nope", content=restart, headers=headers)
        assert (response.status_code, response.json()["error"]) == (404, "unknown_session")
