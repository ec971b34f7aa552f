"""Access tokens on the real process: every bad token is refused before anything exists, on the
WebSocket handshake and on WHIP alike, counted by reason; the token decides who a client is and
what it may do; JWKS keys rotate by editing the file; tokens appear in no log and no task dump."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from media_service.auth import REASONS, Grants, mint, parse_grants
from tests.support.media_process import FAST_LEAK_ENV, TEST_SECRET, MediaProcess, media_service, media_service_async
from tests.support.peers import SignalingClient, make_peer, offer_sdp

AUDIENCE = "media-test"
ISSUER = "https://id.example.test"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
SDP = {"content-type": "application/sdp"}


def jwks(**keys: Any) -> str:
    out = []
    for kid, private in keys.items():
        algorithm = ECAlgorithm if isinstance(private, ec.EllipticCurvePrivateKey) else OKPAlgorithm
        out.append({**algorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid})
    return json.dumps({"keys": out})


def good(user: str = "alice", grants: Grants | None = None, ttl: float = 600) -> str:
    return mint(TEST_SECRET, user, ttl, grants=grants, audience=AUDIENCE, issuer=ISSUER)


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "exp": now + 600, "aud": AUDIENCE, "iss": ISSUER, **extra}


def hs(**extra: Any) -> str:
    return jwt.encode(claims(**extra), TEST_SECRET, algorithm="HS256")


def without(name: str) -> str:
    payload = claims()
    del payload[name]
    return jwt.encode(payload, TEST_SECRET, algorithm="HS256")


def unsigned() -> str:
    return jwt.encode(claims(), None, algorithm="none")  # type: ignore[arg-type]


#: One token for each reason the service gives (user_mismatch is tested with ?user= below).
BAD_TOKENS: dict[str, Any] = {
    "missing": lambda: None,
    "malformed": lambda: "not-a-jwt",
    "oversized": lambda: "x" * 5000,
    "wrong_algorithm": unsigned,
    "unknown_kid": lambda: jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "gone"}),
    "bad_signature": lambda: jwt.encode(claims(), b"z" * 32, algorithm="HS256"),
    "expired": lambda: hs(exp=int(time.time()) - 3600),
    "not_yet_valid": lambda: hs(nbf=int(time.time()) + 3600),
    "wrong_audience": lambda: hs(aud="someone-else"),
    "wrong_issuer": lambda: hs(iss="https://elsewhere.test"),
    "missing_claim": lambda: without("sub"),
    "invalid_claim": lambda: hs(sub="not a name"),
}
assert set(BAD_TOKENS) | {"user_mismatch"} == set(REASONS)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "jwks.json").write_text(jwks(k1=EC_KEY))
    env = {
        **FAST_LEAK_ENV,
        "MEDIA_AUTH_JWKS_FILE": str(tmp / "jwks.json"),
        "MEDIA_AUTH_AUDIENCE": AUDIENCE,
        "MEDIA_AUTH_ISSUER": ISSUER,
    }
    with media_service(tmp, env=env) as media:
        yield media


def failures(media: MediaProcess, reason: str) -> float:
    return media.metric("media_auth_failures_total", {"reason": reason}) or 0


async def ws_refusal(media: MediaProcess, query: str = "", headers: dict[str, str] | None = None) -> Any:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{media.ws_url}?device=d{query}", additional_headers=headers, open_timeout=10):
            pass
    return refused.value.response


async def nothing_left(media: MediaProcess) -> None:
    media.poll_metric("media_ws_clients", lambda v: v == 0)
    assert media.metric("media_sessions_active") == 0


class TestRefusals:
    @pytest.mark.parametrize("reason", sorted(BAD_TOKENS))
    @pytest.mark.parametrize("how", ["header", "query"])
    async def test_websocket_handshake(self, media: MediaProcess, reason: str, how: str, no_leaks: None) -> None:
        token = BAD_TOKENS[reason]()
        before = failures(media, reason)
        if how == "header":
            response = await ws_refusal(media, headers={"Authorization": f"Bearer {token}"} if token else None)
        else:
            response = await ws_refusal(media, f"&access_token={token}" if token else "")
        assert response.status_code == 401
        body = json.loads(response.body)
        assert (body["error"], body["reason"]) == ("unauthorized", reason) and body["message"]
        assert "invalid_token" in response.headers["WWW-Authenticate"] or reason == "missing"
        assert failures(media, reason) == before + 1
        await nothing_left(media)

    @pytest.mark.parametrize("reason", sorted(BAD_TOKENS))
    async def test_whip_before_the_body_is_read(self, media: MediaProcess, reason: str, no_leaks: None) -> None:
        token = BAD_TOKENS[reason]()
        before, rejected = (
            failures(media, reason),
            media.metric("media_sessions_rejected_total", {"code": "bad_request"}),
        )
        headers = {**SDP, **({"Authorization": f"Bearer {token}"} if token else {})}
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            # Garbage an authenticated request would get a 400 for: the token is checked first.
            response = await http.post("/whip", content="not sdp", headers=headers)
        assert response.status_code == 401
        assert response.json()["reason"] == reason and response.json()["error"] == "unauthorized"
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert ('error="invalid_token"' in challenge) == (reason != "missing")  # RFC 6750 §3.1
        assert response.headers["access-control-allow-origin"] == "*"
        assert failures(media, reason) == before + 1
        assert media.metric("media_sessions_rejected_total", {"code": "bad_request"}) == rejected
        await nothing_left(media)

    async def test_whip_takes_no_token_from_the_query(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            response = await http.post(f"/whip?access_token={good()}", content="v=0", headers=SDP)
        assert response.status_code == 401 and response.json()["reason"] == "missing"

    async def test_an_oversized_body_is_not_read_for_a_bad_token(self, media: MediaProcess) -> None:
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            response = await http.post("/whip", content="v" * 200_000, headers=SDP)
        assert response.status_code == 401

    async def test_a_malformed_authorization_header(self, media: MediaProcess, no_leaks: None) -> None:
        before = failures(media, "malformed")
        response = await ws_refusal(media, headers={"Authorization": f"Basic {good()}"})
        assert response.status_code == 401 and json.loads(response.body)["reason"] == "malformed"
        assert failures(media, "malformed") == before + 1

    async def test_refused_clients_leave_no_task_or_descriptor(self, media: MediaProcess, no_leaks: None) -> None:
        pid = media.proc.pid
        media.poll_metric("media_goroutine_baseline", lambda v: v > 0)
        # The connections of the tests before this one are closed before the idle figures are taken.
        media.poll_metric("media_connections_open", lambda v: v == 0)
        idle_fds, idle_tasks = len(os.listdir(f"/proc/{pid}/fd")), media.metric("media_goroutine_count") or 0
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            for reason, make in BAD_TOKENS.items():
                token = make()
                query = f"&access_token={token}" if token else ""
                await asyncio.gather(*(ws_refusal(media, query) for _ in range(5)))
                headers = {**SDP, **({"Authorization": f"Bearer {token}"} if token else {})}
                for _ in range(5):
                    assert (await http.post("/whip", content="v=0", headers=headers)).status_code == 401, reason
        deadline = time.monotonic() + 20
        while (fds := len(os.listdir(f"/proc/{pid}/fd"))) > idle_fds:
            assert time.monotonic() < deadline, f"descriptors of refused clients stayed open: {idle_fds} -> {fds}"
            await asyncio.sleep(0.1)
        media.poll_metric("media_goroutine_count", lambda v: v <= idle_tasks, timeout=30)
        await nothing_left(media)


class TestIdentity:
    async def test_the_user_is_the_tokens_subject(self, media: MediaProcess, no_leaks: None) -> None:
        alice = await SignalingClient.connect(media.ws_url, user="alice", token=good("alice"))
        async with connect(f"{media.ws_url}?access_token={good('bob')}&device=phone", open_timeout=10) as bob:
            await alice.send({"type": "message", "to": "bob", "data": "hi"})
            message = json.loads(await asyncio.wait_for(bob.recv(), 10))
            assert message == {"type": "message", "from": {"user": "alice", "device": "d1"}, "data": "hi"}
        await alice.close()
        await nothing_left(media)

    async def test_user_parameter_naming_someone_else_is_refused(self, media: MediaProcess, no_leaks: None) -> None:
        before = failures(media, "user_mismatch")
        response = await ws_refusal(media, f"&user=bob&access_token={good('alice')}")
        assert response.status_code == 403
        assert json.loads(response.body)["reason"] == "user_mismatch"
        assert failures(media, "user_mismatch") == before + 1
        await nothing_left(media)

    async def test_alice_cannot_receive_bobs_messages(self, media: MediaProcess, no_leaks: None) -> None:
        bob = await SignalingClient.connect(media.ws_url, user="bob", token=good("bob"))
        alice = await SignalingClient.connect(media.ws_url, user="alice", token=good("alice"))
        await ws_refusal(media, f"&user=bob&access_token={good('alice')}")
        carol = await SignalingClient.connect(media.ws_url, user="carol", token=good("carol"))
        await carol.send({"type": "message", "to": "bob", "data": "for bob only"})
        assert (await bob.recv("message"))["data"] == "for bob only"
        await alice.send({"type": "ping"})
        await alice.recv("pong")
        assert [m for m in alice.inbox if m["type"] == "message"] == []
        for client in (alice, bob, carol):
            await client.close()
        await nothing_left(media)

    async def test_alice_cannot_touch_bobs_whip_session(self, media: MediaProcess, no_leaks: None) -> None:
        peer = make_peer()
        sdp, _ = await offer_sdp(peer)
        bob, alice = {"Authorization": f"Bearer {good('bob')}"}, {"Authorization": f"Bearer {good('alice')}"}
        fragment = {"content-type": "application/trickle-ice-sdpfrag"}
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            created = await http.post("/whip", content=sdp, headers={**SDP, **bob})
            assert created.status_code == 201, created.text
            location = created.headers["location"]
            etag = {"if-match": created.headers["etag"]}
            patched = await http.patch(
                location, content="a=end-of-candidates\r\n", headers={**fragment, **alice, **etag}
            )
            assert (patched.status_code, patched.json()["error"]) == (404, "unknown_session")
            assert (await http.delete(location, headers=alice)).status_code == 404
            assert (await http.delete(location)).status_code == 401
            assert media.metric("media_sessions_active") == 1
            assert (await http.delete(location, headers=bob)).status_code == 200
        await peer.close()
        await nothing_left(media)


class TestGrants:
    async def test_a_token_without_publish_cannot_open_sessions(self, media: MediaProcess, no_leaks: None) -> None:
        token = good("viewer", grants=parse_grants(["message:*"]))
        client = await SignalingClient.connect(media.ws_url, user="viewer", token=token)
        peer = make_peer()
        sdp, _ = await offer_sdp(peer)
        await client.send({"type": "offer", "sdp": sdp})
        assert (await client.recv("error"))["code"] == "forbidden"
        async with httpx.AsyncClient(base_url=media.public_url, timeout=10) as http:
            refused = await http.post("/whip", content=sdp, headers={**SDP, "Authorization": f"Bearer {token}"})
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
        assert media.metric("media_sessions_active") == 0
        await client.close()
        await peer.close()
        await nothing_left(media)

    async def test_messages_go_only_to_the_users_granted(self, media: MediaProcess, no_leaks: None) -> None:
        sender = await SignalingClient.connect(
            media.ws_url, user="alice", token=good("alice", grants=parse_grants(["publish", "message:bob"]))
        )
        bob = await SignalingClient.connect(media.ws_url, user="bob", token=good("bob"))
        carol = await SignalingClient.connect(media.ws_url, user="carol", token=good("carol"))
        await sender.send({"type": "message", "to": "carol", "data": 1})
        error = await sender.recv("error")
        assert error["code"] == "forbidden" and "carol" in error["message"]
        await sender.send({"type": "message", "to": "bob", "data": 2})
        assert (await bob.recv("message"))["data"] == 2
        await carol.send({"type": "ping"})
        await carol.recv("pong")
        assert [m for m in carol.inbox if m["type"] == "message"] == []
        for client in (sender, bob, carol):
            await client.close()
        await nothing_left(media)


async def test_jwks_keys_rotate_without_a_restart(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(jwks(old=EC_KEY, new=ED_KEY))
    env = {"MEDIA_AUTH_JWKS_FILE": str(path), "MEDIA_AUTH_SECRET_FILE": ""}
    plain = {"sub": "alice", "exp": int(time.time()) + 600}
    old = jwt.encode(plain, EC_KEY, algorithm="ES256", headers={"kid": "old"})
    new = jwt.encode(plain, ED_KEY, algorithm="EdDSA", headers={"kid": "new"})
    async with media_service_async(tmp_path, env=env) as media:
        for token in (old, new):
            async with connect(f"{media.ws_url}?access_token={token}", open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
        path.write_text(jwks(new=ED_KEY))

        async def refusal() -> str | None:
            try:
                async with connect(f"{media.ws_url}?access_token={old}", open_timeout=10):
                    return None
            except InvalidStatus as refused:
                return str(json.loads(refused.response.body)["reason"])

        deadline = time.monotonic() + 10
        while (reason := await refusal()) is None:  # the file is looked at again within a second
            assert time.monotonic() < deadline, "the removed key was still accepted"
            await asyncio.sleep(0.2)
        assert reason == "unknown_kid"
        async with connect(f"{media.ws_url}?access_token={new}", open_timeout=10):
            pass
        assert '"event": "auth_keys_reloaded"' in media.log()


async def test_tokens_appear_in_no_log_and_no_task_dump(tmp_path: Path, no_leaks: None) -> None:
    used = [good("alice"), good("bob"), hs(exp=int(time.time()) - 3600), "x" * 5000, "not-a-jwt"]
    env = {"MEDIA_AUTH_AUDIENCE": AUDIENCE, "MEDIA_AUTH_ISSUER": ISSUER, "MEDIA_LOG_LEVEL": "debug"}
    async with (
        media_service_async(tmp_path, env=env) as media,
        connect(f"{media.ws_url}?access_token={used[0]}", open_timeout=10) as alice,
    ):
        bob = await SignalingClient.connect(media.ws_url, user="bob", token=used[1])
        for bad in used[2:]:
            await ws_refusal(media, f"&access_token={bad}")
            await ws_refusal(media, headers={"Authorization": f"Bearer {bad}"})
        async with httpx.AsyncClient(timeout=10) as http:
            for bad in used[2:]:
                headers = {**SDP, "Authorization": f"Bearer {bad}"}
                assert (await http.post(f"{media.public_url}/whip", content="v=0", headers=headers)).status_code == 401
            dump = (await http.get(f"{media.admin_url}/debug/tasks")).text
        await alice.send(json.dumps({"type": "ping"}))
        await alice.recv()
        await bob.close()
    log = media.log()
    assert log.count('"event": "auth_refused"') == 3 * len(used[2:])  # once per refused connection or request
    for token in used:
        assert token not in dump and token not in log
        assert token[-24:] not in dump and token[-24:] not in log  # nor its signature


async def test_auth_none_is_explicit_and_visible(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path, env={"MEDIA_AUTH": "none", "MEDIA_AUTH_SECRET_FILE": ""}) as media:
        assert media.metric("media_auth_enabled") == 0
        async with connect(f"{media.ws_url}?user=anyone&device=d", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "message", "to": "anyone", "data": 1}))
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert message["from"] == {"user": "anyone", "device": "d"}
        async with connect(f"{media.ws_url}?user=a%20b", open_timeout=10) as ws:  # names are still checked
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["code"] == "bad_request"
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1008
    assert '"event": "auth_disabled"' in media.log() and '"level": "warning"' in media.log()


def test_without_keys_the_service_does_not_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
    result = subprocess.run(
        [sys.executable, "-m", "media_service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "MEDIA_AUTH_SECRET_FILE" in line and "MEDIA_AUTH_JWKS_FILE" in line and "MEDIA_AUTH=none" in line


class TestTokenCommand:
    def run(self, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_")}
        return subprocess.run(
            [sys.executable, "-m", "media_service", "token", *args],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_it_prints_a_token_the_service_accepts(self, tmp_path: Path) -> None:
        secret = tmp_path / "secret"
        secret.write_bytes(TEST_SECRET)
        result = self.run(
            tmp_path,
            "--user",
            "alice",
            "--ttl",
            "15m",
            "--grant",
            "message:bob",
            MEDIA_AUTH_SECRET_FILE=str(secret),
            MEDIA_AUTH_AUDIENCE=AUDIENCE,
        )
        assert result.returncode == 0, result.stderr
        claims = jwt.decode(result.stdout.strip(), TEST_SECRET, algorithms=["HS256"], audience=AUDIENCE)
        assert claims["sub"] == "alice" and 890 <= claims["exp"] - time.time() <= 900
        assert claims["grants"] == {"publish": False, "message": ["bob"]}

    def test_it_says_what_is_missing(self, tmp_path: Path) -> None:
        result = self.run(tmp_path, "--user", "alice")
        assert result.returncode == 2 and "MEDIA_AUTH_SECRET_FILE is not set" in result.stderr
        result = self.run(tmp_path, "--user", "alice", "--grant", "admin", MEDIA_AUTH_SECRET_FILE="/x")
        assert result.returncode == 2 and "unknown grant 'admin'" in result.stderr
