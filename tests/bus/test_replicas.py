"""Many replicas, one service: three real media-service processes, a real redis-server between them
and a real haproxy in round robin in front, as a Kubernetes Service without affinity spreads clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiortc import RTCSessionDescription

from tests.support.haproxy import Haproxy, round_robin
from tests.support.media_process import (
    MediaProcess,
    access_query,
    auth_header,
    start_media_service,
    stop_media_service,
)
from tests.support.non_reader import NonReader
from tests.support.peers import Peer, SignalingClient, make_peer, offer_sdp
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.slow

AUTH = auth_header("wendy")  # the WHIP publisher of these tests; its session is hers alone
SDP = {"content-type": "application/sdp", **AUTH}
SDPFRAG = {"content-type": "application/trickle-ice-sdpfrag", **AUTH}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = redis_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


async def start_replicas(tmp_path: Path, redis: RedisServer, count: int = 3) -> list[MediaProcess]:
    """``count`` replicas, each on its own loopback address, all on one Redis."""

    def start(i: int) -> MediaProcess:
        host = f"127.0.0.{i + 2}"
        # The rate limits let one sender's thousands of messages through at once (the ordering and
        # slow-device tests): in messages, and in relayed bytes (MEDIA_WS_RELAY_RATE_BYTES).
        env = {"MEDIA_REDIS_URL": redis.url, "MEDIA_WS_RATE_LIMIT": "2000", "MEDIA_WS_RELAY_RATE_BYTES": str(1 << 30)}
        return start_media_service(tmp_path, host=host, env=env)

    replicas = list(await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(count))))
    for media in replicas:  # connected to Redis: the bus is up before the test begins
        await asyncio.to_thread(media.poll_metric, "media_bus_up", lambda v: v == 1)
    return replicas


@pytest.fixture
async def replicas(tmp_path: Path, redis: RedisServer) -> AsyncIterator[list[MediaProcess]]:
    started = await start_replicas(tmp_path, redis)
    try:
        yield started
    finally:
        await asyncio.gather(*(asyncio.to_thread(stop_media_service, media) for media in started))


@pytest.fixture
def balancer(tmp_path: Path, replicas: list[MediaProcess]) -> Iterator[Haproxy]:
    proxy = round_robin(tmp_path, [(media.host, media.port) for media in replicas])
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.asynccontextmanager
async def clients(*specs: tuple[MediaProcess, str, str]) -> AsyncIterator[list[SignalingClient]]:
    connected = [await SignalingClient.connect(media.ws_url, user=user, device=device) for media, user, device in specs]
    try:
        yield connected
    finally:
        for client in connected:
            await client.close()


async def subscribed(media: MediaProcess, users: int) -> None:
    """A replica subscribes to a user's channel when the user's first device connects there; a
    message published before Redis confirms it would miss the replica (pub/sub is at most once)."""
    await asyncio.to_thread(media.poll_metric, "media_bus_subscriptions", lambda v: v == users, 30)


async def test_a_message_reaches_every_device_of_the_user_on_every_replica(replicas: list[MediaProcess]) -> None:
    phone_host, laptop_host, sender_host = replicas
    async with clients(
        (phone_host, "alice", "phone"), (laptop_host, "alice", "laptop"), (sender_host, "bob", "desk")
    ) as (phone, laptop, bob):
        await subscribed(phone_host, 1)
        await subscribed(laptop_host, 1)
        await bob.send({"type": "message", "to": "alice", "data": {"text": "hi"}})
        for device in (phone, laptop):
            got = await device.recv("message")
            assert got == {"type": "message", "from": {"user": "bob", "device": "desk"}, "data": {"text": "hi"}}
        # Nobody anywhere: not_online, decided from PUBLISH's receiver count.
        await bob.send({"type": "message", "to": "nobody", "data": 1})
        error = await bob.recv("error")
        assert error["code"] == "not_online"
        assert "error" not in [m["type"] for m in phone.inbox + laptop.inbox + bob.inbox]
    assert sender_host.metric("media_bus_messages_total", {"direction": "out", "result": "ok"}) == 2
    for media in (phone_host, laptop_host):
        assert media.metric("media_bus_messages_total", {"direction": "in", "result": "ok"}) == 1


async def test_a_user_on_the_senders_replica_only_is_not_reported_remote(replicas: list[MediaProcess]) -> None:
    """The sender's own subscription is not a receiver elsewhere: a user who has left is not_online."""
    async with clients((replicas[0], "carol", "a"), (replicas[0], "dave", "a")) as (carol, dave):
        await dave.send({"type": "message", "to": "carol", "data": "x"})
        assert (await carol.recv("message"))["data"] == "x"
        await carol.close()
        await asyncio.to_thread(replicas[0].poll_metric, "media_ws_clients", lambda v: v == 1)
        await dave.send({"type": "message", "to": "carol", "data": "y"})
        assert (await dave.recv("error"))["code"] == "not_online"


async def test_a_thousand_messages_from_one_sender_arrive_in_order(replicas: list[MediaProcess]) -> None:
    count = 1000
    async with clients((replicas[0], "erin", "1"), (replicas[1], "erin", "2"), (replicas[2], "frank", "1")) as (
        first,
        second,
        frank,
    ):
        await subscribed(replicas[0], 1)
        await subscribed(replicas[1], 1)
        for seq in range(count):
            await frank.send({"type": "message", "to": "erin", "data": seq})
        for device in (first, second):
            received = [(await device.recv("message", timeout=30))["data"] for _ in range(count)]
            assert received == list(range(count))
        assert "error" not in [m["type"] for m in frank.inbox]


@pytest.fixture
async def whip_offer(no_leaks: None) -> AsyncIterator[tuple[Peer, str, list[str]]]:
    """A real aiortc peer's offer, its candidates kept back for trickling; closed whatever happens."""
    peer = make_peer(video=True, data=False)
    try:
        sdp, candidates = await offer_sdp(peer, trickle=True)
        yield peer, sdp, candidates
    finally:
        await peer.close()


def fragment(candidates: list[str]) -> str:
    return "a=mid:0\r\n" + "".join(f"a={c}\r\n" for c in candidates) + "a=end-of-candidates\r\n"


def holder(replicas: list[MediaProcess]) -> MediaProcess:
    (owner,) = [media for media in replicas if media.metric("media_sessions_active") == 1]
    return owner


async def test_whip_create_trickle_delete_through_the_balancer_each_on_another_replica(
    replicas: list[MediaProcess], balancer: Haproxy, whip_offer: tuple[Peer, str, list[str]]
) -> None:
    peer, sdp, candidates = whip_offer
    async with httpx.AsyncClient(base_url=balancer.url, timeout=15) as http:
        created = await http.post("/whip", content=sdp, headers=SDP)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        await peer.pc.setRemoteDescription(RTCSessionDescription(created.text, "answer"))
        owner = holder(replicas)
        # Round robin: the next two requests land on the other two replicas, which forward them.
        etag = {"if-match": created.headers["etag"]}
        patched = await http.patch(location, content=fragment(candidates), headers={**SDPFRAG, **etag})
        assert patched.status_code == 204, patched.text
        assert patched.headers["access-control-allow-origin"] == "*"
        assert await peer.wait_frames(10) >= 10  # the trickled candidates reached the session
        deleted = await http.delete(location, headers=AUTH)
        assert deleted.status_code == 200, deleted.text
        await asyncio.to_thread(owner.poll_metric, "media_sessions_active", lambda v: v == 0)
        assert (await http.delete(location, headers=AUTH)).status_code == 404  # gone everywhere, from any replica
    forwarded = sum(media.metric("media_whip_forwards_total", {"result": "ok"}) or 0 for media in replicas)
    assert forwarded == 2, "PATCH and DELETE each landed on a replica that does not hold the session"
    assert owner.metric("media_whip_forwards_total", {"result": "ok"}) == 0


async def test_a_draining_replica_still_answers_for_its_own_sessions(
    replicas: list[MediaProcess], balancer: Haproxy, whip_offer: tuple[Peer, str, list[str]]
) -> None:
    _, sdp, _ = whip_offer
    async with httpx.AsyncClient(base_url=balancer.url, timeout=15) as http:
        created = await http.post("/whip", content=sdp, headers=SDP)
        assert created.status_code == 201, created.text
        owner = holder(replicas)
        async with httpx.AsyncClient(base_url=owner.admin_url) as admin:
            assert (await admin.post("/admin/drain")).status_code == 202
            assert (await admin.get("/ready")).status_code == 503
        others = [media for media in replicas if media is not owner]
        # Straight to a replica that does not hold it: forwarded to the draining owner, which answers.
        async with httpx.AsyncClient(base_url=others[0].public_url, timeout=15) as other:
            deleted = await other.delete(created.headers["location"], headers=AUTH)
        assert deleted.status_code == 200, deleted.text
        await asyncio.to_thread(owner.poll_metric, "media_sessions_active", lambda v: v == 0)


@contextlib.contextmanager
def trap() -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """A listener that records every connection made to it: where a replica must never call."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    host, port = server.getsockname()
    seen: list[tuple[str, int]] = []
    try:
        yield f"{host}:{port}", seen
    finally:
        with contextlib.suppress(OSError):
            while True:
                connection, address = server.accept()
                seen.append(address)
                connection.close()
        server.close()


async def test_a_forged_forwarding_header_never_makes_a_replica_call_an_address_from_the_request(
    replicas: list[MediaProcess], whip_offer: tuple[Peer, str, list[str]]
) -> None:
    _, sdp, candidates = whip_offer
    async with httpx.AsyncClient(base_url=replicas[0].public_url, timeout=15) as first:
        created = await first.post("/whip", content=sdp, headers=SDP)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
    with trap() as (address, seen):
        headers = {
            **SDPFRAG,
            "if-match": created.headers["etag"],
            "host": address,
            "x-forwarded-host": address,
            "forwarded": f"host={address}",
            "x-media-forwarded": "1",
        }
        async with httpx.AsyncClient(base_url=replicas[1].public_url, timeout=15) as second:
            # Marked as forwarded already: no second hop, the replica answers for itself.
            refused = await second.patch(location, content=fragment(candidates), headers=headers)
            assert refused.status_code == 404
            # Unmarked: forwarded, but only to the owner recorded in Redis, whatever the headers say.
            del headers["x-media-forwarded"]
            forwarded = await second.patch(location, content=fragment(candidates), headers=headers)
            assert forwarded.status_code == 204, forwarded.text
            # If-Match reaches the owner, which alone knows the ICE session: its 412 and 428 come back.
            stale = await second.patch(location, content=fragment(candidates), headers={**headers, "if-match": '"x"'})
            assert (stale.status_code, stale.json()["error"]) == (412, "precondition_failed")
            unconditional = {k: v for k, v in headers.items() if k != "if-match"}
            missing = await second.patch(location, content=fragment(candidates), headers=unconditional)
            assert (missing.status_code, missing.json()["error"]) == (428, "precondition_required")
            unknown = await second.patch("/whip/" + "0" * 24, content=fragment(candidates), headers=headers)
            assert unknown.status_code == 404
    assert seen == []
    assert replicas[1].metric("media_whip_forwards_total", {"result": "ok"}) == 3  # the 204, the 412 and the 428
    assert replicas[1].metric("media_whip_forwards_total", {"result": "not_found"}) == 1
    async with httpx.AsyncClient(base_url=replicas[0].public_url, timeout=15) as first:
        assert (await first.delete(location, headers=AUTH)).status_code == 200


def open_fds(media: MediaProcess) -> int:
    return len(list(Path(f"/proc/{media.proc.pid}/fd").iterdir()))


async def test_redis_killed_mid_run_local_delivery_goes_on_remote_sends_say_unavailable_and_all_recovers(
    tmp_path: Path, redis: RedisServer, replicas: list[MediaProcess]
) -> None:
    here, there, _ = replicas
    async with clients((here, "gina", "1"), (here, "gina", "2"), (here, "hal", "1"), (there, "ivan", "1")) as (
        gina1,
        gina2,
        hal,
        ivan,
    ):
        await subscribed(there, 1)
        await hal.send({"type": "message", "to": "ivan", "data": "before"})
        assert (await ivan.recv("message"))["data"] == "before"
        fds_before = open_fds(here)

        redis.kill()
        await asyncio.to_thread(here.poll_metric, "media_bus_up", lambda v: v == 0)
        # Local delivery goes on; the sender learns the other replicas were not reached.
        await hal.send({"type": "message", "to": "gina", "data": "local"})
        for device in (gina1, gina2):
            assert (await device.recv("message"))["data"] == "local"
        error = await hal.recv("error")
        assert error["code"] == "unavailable" and "2 device(s) on this replica" in error["message"]
        # A remote send is refused, retryably, rather than lost in silence.
        await hal.send({"type": "message", "to": "ivan", "data": "lost?"})
        assert (await hal.recv("error"))["code"] == "unavailable"
        assert here.metric("media_ready") == 1  # media still works: readiness stays up
        # Sessions keep working meanwhile: the process answers its clients.
        await gina1.send({"type": "ping"})
        await gina1.recv("pong")

        redis.start()  # back, and empty: presence and owners are rebuilt by the replicas
        for media in replicas:
            await asyncio.to_thread(media.poll_metric, "media_bus_up", lambda v: v == 1, 30)
        assert here.metric("media_bus_reconnects_total") == 1
        await subscribed(there, 1)  # Redis came back empty: the replica subscribed again
        await hal.send({"type": "message", "to": "ivan", "data": "after"})
        assert (await ivan.recv("message"))["data"] == "after"
        assert "lost?" not in [m.get("data") for m in ivan.inbox]
        # No connection, task or thread is left behind by the outage and the reconnects.
        assert open_fds(here) <= fds_before + 1
    assert "bus_disconnected" in here.log() and "bus_connected" in here.log()
    assert here.log().count('"event": "bus_disconnected"') == 1  # one line per change, not per retry


async def test_redis_restarted_empty_session_owners_are_rebuilt(
    redis: RedisServer, replicas: list[MediaProcess], balancer: Haproxy, whip_offer: tuple[Peer, str, list[str]]
) -> None:
    _, sdp, candidates = whip_offer
    async with httpx.AsyncClient(base_url=balancer.url, timeout=15) as http:
        created = await http.post("/whip", content=sdp, headers=SDP)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        owner = holder(replicas)
        redis.kill()
        others = [media for media in replicas if media is not owner]
        async with httpx.AsyncClient(base_url=others[0].public_url, timeout=15) as other:
            await asyncio.to_thread(others[0].poll_metric, "media_bus_up", lambda v: v == 0)
            etag = {"if-match": created.headers["etag"]}
            down = await other.patch(location, content=fragment(candidates), headers={**SDPFRAG, **etag})
            assert down.status_code == 503 and down.headers["retry-after"]
            redis.start()  # empty: nothing is saved
            await asyncio.to_thread(owner.poll_metric, "media_bus_up", lambda v: v == 1, 30)
            await asyncio.to_thread(others[0].poll_metric, "media_bus_up", lambda v: v == 1, 30)
            assert re.fullmatch(r"\$\d+", redis.command("GET", "media:whip:" + location.rsplit("/", 1)[1]))
            patched = await other.patch(location, content=fragment(candidates), headers={**SDPFRAG, **etag})
            assert patched.status_code == 204, patched.text
        assert (await http.delete(location, headers=AUTH)).status_code in (200, 404)
        async with httpx.AsyncClient(base_url=owner.public_url, timeout=15) as direct:
            await direct.delete(location, headers=AUTH)
        await asyncio.to_thread(owner.poll_metric, "media_sessions_active", lambda v: v == 0)
    assert redis.command("EXISTS", "media:whip:" + location.rsplit("/", 1)[1]) == ":0"


async def test_one_process_without_redis_has_its_bus_up_and_in_memory(tmp_path: Path) -> None:
    media = await asyncio.to_thread(start_media_service, tmp_path)
    try:
        assert media.metric("media_bus_up") == 1
        async with clients((media, "jo", "1"), (media, "kim", "1")) as (jo, kim):
            await kim.send({"type": "message", "to": "jo", "data": 7})
            assert (await jo.recv("message"))["data"] == 7
            await kim.send({"type": "message", "to": "nobody", "data": 7})
            assert (await kim.recv("error"))["code"] == "not_online"
        assert media.metric("media_bus_messages_total", {"direction": "out", "result": "ok"}) == 0
    finally:
        await asyncio.to_thread(stop_media_service, media)


async def test_a_non_reading_device_is_dropped_by_its_own_replica_and_the_others_get_everything(
    replicas: list[MediaProcess], no_leaks: None
) -> None:
    sender_host, slow_host, healthy_host = replicas
    count = 2000  # far more than a non-reader's queue (256) and socket buffers hold
    pad = "x" * 2000
    slow = await NonReader.open(slow_host.host, slow_host.port, f"/ws?user=lee&device=slow&{access_query('lee')}")
    try:
        async with clients((healthy_host, "lee", "fast"), (sender_host, "mo", "1")) as (fast, mo):
            await subscribed(slow_host, 1)
            await subscribed(healthy_host, 1)
            for seq in range(count):
                await mo.send({"type": "message", "to": "lee", "data": {"seq": seq, "pad": pad}})
            received = [(await fast.recv("message", timeout=30))["data"]["seq"] for _ in range(count)]
            assert received == list(range(count))
            await asyncio.to_thread(slow_host.poll_metric, "media_ws_send_timeouts_total", lambda v: v == 1, 30)
            # Only the slow device's own replica dropped anyone; the sender was never held up.
            assert sender_host.metric("media_ws_send_timeouts_total") == 0
            assert healthy_host.metric("media_ws_send_timeouts_total") == 0
            assert "error" not in [m["type"] for m in mo.inbox]
        # Ended by its replica: a close frame 1013 if it could still be written, else an abort.
        assert await slow.read_to_end(10) in (1013, None)
    finally:
        slow.sock.close()


async def test_another_users_token_cannot_touch_a_session_through_another_replica(
    replicas: list[MediaProcess], whip_offer: tuple[Peer, str, list[str]]
) -> None:
    _, sdp, candidates = whip_offer
    async with httpx.AsyncClient(base_url=replicas[0].public_url, timeout=15) as owner:
        created = await owner.post("/whip", content=sdp, headers=SDP)
        assert created.status_code == 201, created.text
        location = created.headers["location"]
    intruder = auth_header("mallory")
    async with httpx.AsyncClient(base_url=replicas[1].public_url, timeout=15) as other:
        # Forwarded with mallory's token; the owner answers as for a session that does not exist.
        etag = {"if-match": created.headers["etag"]}
        patched = await other.patch(location, content=fragment(candidates), headers={**SDPFRAG, **intruder, **etag})
        assert patched.status_code == 404
        assert (await other.delete(location, headers=intruder)).status_code == 404
        # Unauthenticated: refused before any lookup or forwarding.
        anonymous = await other.delete(location)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert replicas[0].metric("media_sessions_active") == 1
    assert replicas[1].metric("media_whip_forwards_total", {"result": "ok"}) == 2
    async with httpx.AsyncClient(base_url=replicas[1].public_url, timeout=15) as other:
        assert (await other.delete(location, headers=AUTH)).status_code == 200


async def test_non_ascii_and_lone_surrogates_cross_replicas_intact(replicas: list[MediaProcess]) -> None:
    """Through Redis as UTF-8 (no 3x escapes); a lone surrogate, which UTF-8 cannot carry, escaped."""
    sender_host, receiver_host, _ = replicas
    async with clients((receiver_host, "uma", "1"), (sender_host, "vic", "1")) as (uma, vic):
        await subscribed(receiver_host, 1)
        await vic.send('{"type": "message", "to": "uma", "data": "é\\ud800😀"}')
        assert (await uma.recv("message"))["data"] == "é\ud800😀"
        assert "error" not in [m["type"] for m in vic.inbox]
