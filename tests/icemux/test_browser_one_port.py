"""Headless Chromium through one UDP port: the service runs in a namespace where every other UDP
port is dropped; the demo page's call connects, the pair Chromium selected ends at the shared
port, and echoed video keeps arriving past two consent rounds (RFC 7675: Chromium and aioice
each check consent about every 5 s, and close the call after 30 s without an answer)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.icemux.conftest import MUX_PORT
from tests.service.test_browser import chromium, open_page, wait_stats
from tests.support.media_process import media_service
from tests.support.netns import Namespace

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser

#: Held this long once connected: past two consent rounds of both ends.
HOLD_MS = 12_000


def browser_for(origin: str) -> AbstractContextManager[BrowserContext]:
    """Chromium as in tests/service/test_browser.py, with ``origin`` (plain HTTP, not loopback)
    treated as secure so that the page may open the fake camera."""
    return chromium(f"--unsafely-treat-insecure-origin-as-secure={origin}")


def test_chromium_media_flows_through_the_one_port_past_two_consent_rounds(pod: Namespace, tmp_path: Path) -> None:
    with (
        media_service(
            tmp_path,
            host=pod.inside,
            port=8080,
            admin_port=9090,
            wrap=pod.exec(),
            args=["--dev"],
            env={
                "MEDIA_AUTH_SECRET_FILE": "",
                "MEDIA_ICE_HOST_ADDRESSES": pod.inside,
                "MEDIA_ICE_ALLOW_LOOPBACK": "0",
                "MEDIA_ICE_UDP_PORT": str(MUX_PORT),
            },
        ) as media,
        browser_for(media.public_url) as browser,
    ):
        problems: list[str] = []
        page = open_page(browser, media, problems)
        page.get_by_role("button", name="Start").click()
        stats = wait_stats(
            page,
            "s.state === 'connected' && s.session && s.remotePort && s.inboundBytes > 0",
            "the call connects and echoed video arrives",
            unless="s.state === 'closed'",
        )
        session = stats["session"]
        assert (stats["remoteAddress"], stats["remotePort"]) == (pod.inside, MUX_PORT), stats
        assert media.metric("media_ice_mux_sessions") == 1 == media.metric("media_sessions_active")

        held_from = page.evaluate("() => performance.now()")
        stats = wait_stats(
            page,
            f"performance.now() > {held_from + HOLD_MS} && s.inboundBytes > {stats['inboundBytes']}",
            "the call holds past two consent rounds",
            unless="s.state !== 'connected'",
        )
        assert (stats["state"], stats["session"], stats["remotePort"]) == ("connected", session, MUX_PORT)
        wait_stats(page, f"s.inboundBytes > {stats['inboundBytes']}", "echoed video still arrives after the hold")
        assert media.metric("media_sessions_closed_total", {"reason": "failed"}) == 0
        assert media.metric("media_ice_mux_addresses") >= 1

        page.get_by_role("button", name="Hang up").click()
        wait_stats(page, "s.state === 'closed' && s.session === null", "hang up closes the call")
        media.poll_metric("media_sessions_active", lambda v: v == 0, timeout=60)
        media.poll_metric("media_ice_mux_sessions", lambda v: v == 0, timeout=10)
        assert problems == [], problems
        page.close()
