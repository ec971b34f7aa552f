"""The session manager under the awkward timings of shutdown, with real aiortc peer connections."""

from __future__ import annotations

import asyncio

import pytest

from media_service.config import Settings
from media_service.metrics import ServiceMetrics
from media_service.sessions import Draining, Session, SessionManager
from tests.support.peers import make_peer, offer_sdp


def manager() -> tuple[SessionManager, ServiceMetrics]:
    metrics = ServiceMetrics()
    return SessionManager(Settings(), metrics, accepting=lambda: True), metrics


async def test_an_offer_answered_after_shutdown_is_refused(no_leaks: None) -> None:
    sessions, metrics = manager()
    peer = make_peer()
    opening = asyncio.create_task(sessions.open((await offer_sdp(peer))[0]))
    await asyncio.sleep(0)  # let the offer start: it now holds a slot and is being answered
    assert not sessions.empty.is_set()
    assert await sessions.close_all("shutdown") == 0  # nothing to close yet: the offer is in flight
    with pytest.raises(Draining, match="shutting down"):
        await opening
    assert len(sessions) == 0 and sessions.empty.is_set()
    assert metrics.sessions_rejected.labels(code="draining")._value.get() == 1
    await peer.close()


async def test_a_cancelled_close_still_says_bye(no_leaks: None) -> None:
    sessions, _ = manager()
    peer = make_peer()
    byes: list[str] = []

    def on_closed(session: Session, reason: str) -> None:
        byes.append(reason)

    session, _ = await sessions.open((await offer_sdp(peer))[0], on_closed=on_closed)
    closing = asyncio.create_task(sessions.close(session.id, "shutdown"))
    await asyncio.sleep(0)  # the close is now waiting for the peer connection to close
    closing.cancel()  # as a second signal does to the drain
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert byes == ["shutdown"]
    assert session.owner.closed and sessions.empty.is_set() and len(sessions) == 0
    await sessions.close_all("shutdown")  # waits for the peer close, which the cancel did not cut short
    assert session.pc.connectionState == "closed"
    await peer.close()
