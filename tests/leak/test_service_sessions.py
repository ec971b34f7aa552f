"""Real video sessions against the real service: their tasks and decoder threads are load, not a
leak, and once they end nothing of theirs is left to become an orphan."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.media_process import FAST_LEAK_ENV, media_service_async
from tests.support.peers import Peer, SignalingClient, open_session

SESSIONS = 3


async def test_video_sessions_are_load_and_leave_no_orphans(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path, host="127.0.0.2", env=FAST_LEAK_ENV) as media:
        baseline = await asyncio.to_thread(media.poll_metric, "media_goroutine_baseline", lambda v: v > 0)
        client = await SignalingClient.connect(media.ws_url)
        peers: list[Peer] = []
        try:
            for _ in range(SESSIONS):
                peers.append(await open_session(client, video=True, data=False))
            for peer in peers:
                assert await peer.wait_frames(10) >= 10  # media flows both ways
            # The raw count is far above 3 x baseline; what load cannot explain is not.
            await asyncio.to_thread(media.poll_metric, "media_goroutine_count", lambda v: v > 3 * baseline)
            assert media.metric("media_potential_goroutine_leak") == 0
            assert (media.metric("media_goroutine_unexplained") or 0) <= 3 * baseline
            assert (media.metric("media_asyncio_tasks", {"owner": "live"}) or 0) > 3 * baseline
        finally:
            for peer in peers:
                await client.send({"type": "bye", "session": peer.session})
                await peer.close()
            await client.close()
        await asyncio.to_thread(media.poll_metric, "media_sessions_active", lambda v: v == 0)
        # Past the orphan grace period, the closed sessions' tasks are gone, not orphaned.
        for state in ("live", "closing"):
            await asyncio.to_thread(media.poll_metric, "media_asyncio_tasks", lambda v: v == 0, 20.0, {"owner": state})
        assert media.metric("media_asyncio_tasks", {"owner": "orphaned"}) == 0
        assert media.metric("media_potential_goroutine_leak") == 0
