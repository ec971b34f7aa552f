"""RFC 9725 as written, through the real service: the ICE session's entity tag, conditional PATCH
(428, 412), ICE restart requests (422: not supported, the ICE session goes on), all-or-nothing
trickle, ICE servers in Link headers, 405 with CORS headers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from aiortc import RTCSessionDescription

from tests.support.media_process import MediaProcess, auth_header, media_service
from tests.support.peers import Peer, make_peer, offer_sdp

SDP = {"content-type": "application/sdp"}
SDPFRAG = {"content-type": "application/trickle-ice-sdpfrag"}
CANDIDATE = "a=candidate:{n} 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"
RESTART = "a=ice-ufrag:Zx9q\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=mid:0\r\n"
ICE_SERVERS = [
    {"urls": "stun:127.0.0.1:9"},
    {"urls": ["turn:127.0.0.1:9?transport=udp", "turns:127.0.0.1:9"], "username": "u1", "credential": 'p"w'},
]


def candidates(count: int, first_port: int = 40000) -> str:
    return "a=mid:0\r\n" + "".join(CANDIDATE.format(n=n, port=first_port + n) for n in range(count))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory):
    with media_service(tmp_path_factory.mktemp("whip")) as media:
        yield media


@pytest.fixture
async def http(media: MediaProcess, no_leaks: None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header(), timeout=15) as http:
        yield http
    media.poll_metric("media_sessions_active", lambda v: v == 0)


async def create(http: httpx.AsyncClient, *, video: bool = False) -> tuple[httpx.Response, Peer]:
    peer = make_peer(video=video, data=not video)
    sdp, _ = await offer_sdp(peer, trickle=True)  # trickling: no end-of-candidates yet
    created = await http.post("/whip", content=sdp, headers=SDP)
    assert created.status_code == 201, created.text
    return created, peer


async def test_the_etag_names_the_ice_session(http: httpx.AsyncClient) -> None:
    first, peer1 = await create(http)
    second, peer2 = await create(http)
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    assert first.headers["location"].rsplit("/", 1)[1] not in etag  # not the session id any more
    assert etag != second.headers["etag"]
    assert "ETag" in first.headers["access-control-expose-headers"]
    for created, peer in ((first, peer1), (second, peer2)):
        assert (await http.delete(created.headers["location"])).status_code == 200
        await peer.close()


async def test_patch_needs_the_current_entity_tag(http: httpx.AsyncClient) -> None:
    created, peer = await create(http)
    location, etag = created.headers["location"], created.headers["etag"]
    missing = await http.patch(location, content=candidates(1), headers=SDPFRAG)
    assert (missing.status_code, missing.json()["error"]) == (428, "precondition_required")
    assert missing.headers["access-control-allow-origin"] == "*"
    for stale in ('"0123"', f"W/{etag}", '"a", "b"'):  # another tag; weak tags never match strongly
        refused = await http.patch(location, content=candidates(1), headers={**SDPFRAG, "if-match": stale})
        assert (refused.status_code, refused.json()["error"]) == (412, "precondition_failed"), stale
    for good in (etag, f'"other", {etag}'):
        accepted = await http.patch(location, content=candidates(1), headers={**SDPFRAG, "if-match": good})
        assert accepted.status_code == 204, accepted.text
    assert (await http.delete(location)).status_code == 200
    await peer.close()


async def test_an_ice_restart_is_refused_and_the_ice_session_goes_on(http: httpx.AsyncClient) -> None:
    peer = make_peer(video=True, data=False)
    sdp, _ = await offer_sdp(peer)
    created = await http.post("/whip", content=sdp, headers=SDP)
    assert created.status_code == 201, created.text
    await peer.pc.setRemoteDescription(RTCSessionDescription(created.text, "answer"))
    assert await peer.wait_frames(10) >= 10
    restart = await http.patch(created.headers["location"], content=RESTART, headers={**SDPFRAG, "if-match": "*"})
    assert (restart.status_code, restart.json()["error"]) == (422, "ice_restart_unsupported")
    assert restart.headers["access-control-allow-origin"] == "*"
    before = peer.frames_received
    assert await peer.wait_frames(before + 15) >= before + 15  # the old ICE session still carries media
    # Its entity tag is unchanged: trickling on it still works.
    again = await http.patch(
        created.headers["location"],
        content="a=end-of-candidates\r\n",
        headers={**SDPFRAG, "if-match": created.headers["etag"]},
    )
    assert again.status_code == 204
    assert (await http.delete(created.headers["location"])).status_code == 200
    await peer.close()


async def test_a_patch_over_the_candidate_cap_changes_nothing(http: httpx.AsyncClient, media: MediaProcess) -> None:
    created, peer = await create(http)
    location, etag = created.headers["location"], {"if-match": created.headers["etag"]}
    rejected = media.metric("media_ice_candidates_rejected_total") or 0
    over = await http.patch(location, content=candidates(60), headers={**SDPFRAG, **etag})
    assert (over.status_code, over.json()["error"]) == (422, "ice_candidate_limit")
    assert media.metric("media_ice_candidates_rejected_total") == rejected + 60
    # Had the refused PATCH applied any, these 50 would not all fit under the cap of 50.
    fits = await http.patch(location, content=candidates(50, 41000), headers={**SDPFRAG, **etag})
    assert fits.status_code == 204, fits.text
    one_more = await http.patch(location, content=candidates(1, 42000), headers={**SDPFRAG, **etag})
    assert one_more.status_code == 422
    assert (await http.delete(location)).status_code == 200
    await peer.close()


async def test_a_patch_with_one_bad_candidate_changes_nothing(http: httpx.AsyncClient) -> None:
    created, peer = await create(http)
    location, etag = created.headers["location"], {"if-match": created.headers["etag"]}
    body = candidates(3) + "a=candidate:garbage\r\n"
    assert (await http.patch(location, content=body, headers={**SDPFRAG, **etag})).status_code == 400
    other_mid = candidates(3) + "a=mid:nope\r\n" + CANDIDATE.format(n=9, port=40009)  # a mid the session lacks
    refused = await http.patch(location, content=other_mid, headers={**SDPFRAG, **etag})
    assert refused.status_code == 400 and "mid 'nope'" in refused.json()["message"]
    # Nothing was applied: the session still takes the cap's 50 candidates.
    assert (await http.patch(location, content=candidates(50, 41000), headers={**SDPFRAG, **etag})).status_code == 204
    assert (await http.delete(location)).status_code == 200
    await peer.close()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/whip", "POST, OPTIONS"),
        ("PUT", "/whip/x", "PATCH, DELETE, OPTIONS"),
        ("POST", "/whip/x", "PATCH, DELETE, OPTIONS"),
    ],
)
async def test_other_methods_get_405_with_cors_headers(
    http: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await http.request(method, path)
    assert response.status_code == 405
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["allow"] == allow
    assert response.json()["error"] == "method_not_allowed"


async def test_no_link_headers_without_ice_servers(http: httpx.AsyncClient) -> None:
    created, peer = await create(http)
    assert "link" not in created.headers
    assert (await http.delete(created.headers["location"])).status_code == 200
    await peer.close()


async def test_ice_servers_are_offered_in_link_headers(
    tmp_path_factory: pytest.TempPathFactory, no_leaks: None
) -> None:
    env = {"MEDIA_ICE_SERVERS": json.dumps(ICE_SERVERS)}
    with media_service(tmp_path_factory.mktemp("links"), env=env) as media:
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header(), timeout=30) as http:
            preflight = await http.options(
                "/whip", headers={"origin": "https://a.example", "access-control-request-method": "POST"}
            )
            assert preflight.status_code == 204 and "link" not in preflight.headers
            created, peer = await create(http)
            assert created.headers.get_list("link") == [
                '<stun:127.0.0.1:9>; rel="ice-server"',
                '<turn:127.0.0.1:9?transport=udp>; rel="ice-server"; username="u1"; credential="p\\"w"; '
                'credential-type="password"',
                '<turns:127.0.0.1:9>; rel="ice-server"; username="u1"; credential="p\\"w"; credential-type="password"',
            ]
            assert "Link" in created.headers["access-control-expose-headers"]
            assert (await http.delete(created.headers["location"])).status_code == 200
            await peer.close()
