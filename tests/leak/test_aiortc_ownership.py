"""Real aiortc peers on loopback: the tasks and threads a peer connection starts inside a
session's scope are counted as the session's, and none are left once it is closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack

from media_service.leak.census import Census, take_census
from media_service.leak.ownership import Owner, TaskOwnership, owned_by
from media_service.leak.taskdump import task_dump

GRACE = 0.5


async def census_until(ownership: TaskOwnership, predicate: Callable[[Census], bool], timeout: float = 20.0) -> Census:
    deadline = time.monotonic() + timeout
    census = take_census(ownership, grace=GRACE)
    while not predicate(census):
        if time.monotonic() > deadline:
            raise AssertionError(f"census stayed at {census}")
        await asyncio.sleep(0.02)
        census = take_census(ownership, grace=GRACE)
    return census


async def test_a_peer_connections_tasks_and_decoder_thread_belong_to_its_session(ownership: TaskOwnership) -> None:
    config = RTCConfiguration(iceServers=[])
    sender = RTCPeerConnection(config)
    sender.addTrack(AudioStreamTrack())
    owner = Owner("session:aiortc")
    tracks: list[MediaStreamTrack] = []
    with owned_by(owner):
        receiver = RTCPeerConnection(config)
    receiver.on("track", tracks.append)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        with owned_by(owner):  # as the service does while it answers an offer
            await receiver.setRemoteDescription(sender.localDescription)
            await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        # Media flows once ICE and DTLS are up; aiortc then starts the track's decoder thread.
        running = await census_until(ownership, lambda c: c.session_threads == 1 and c.live > 0)
        assert tracks and tracks[0].kind == "audio"
        assert running.closing == running.orphaned == 0
        groups = task_dump(ownership, grace=GRACE, stack_limit=0)["groups"]
        owned_modules = {str(g["coroutine"]).split(".")[0] for g in groups if g["owner"] == "live"}
        assert "aiortc" in owned_modules
    finally:
        owner.close()
        await receiver.close()
        await sender.close()
    # Closed cleanly: the session's tasks end and its decoder thread is joined, so no orphans.
    done = await census_until(ownership, lambda c: c.live == c.closing == 0 and c.session_threads == 0)
    assert done.orphaned == 0
