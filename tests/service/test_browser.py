"""Headless Chromium against the real service: the demo page's camera comes back echoed.

The browser is Debian's chromium, driven by Playwright (no browser download: ``executable_path``).
The service runs as ``make run`` runs it, in development mode, and the page is opened at the address
it prints, access token included: the flow a developer follows.
Chromium's fake camera and microphone feed the page; the service answers with 127.0.0.1 candidates
only, and the test checks that the pair ICE selected ends at 127.0.0.1 and starts at an address of
this host (Chromium ranks its loopback candidate last, so it may send from eth0's address; the
packets still never leave the machine).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.media_process import MediaProcess, media_service
from tests.support.tools import require_tool

try:
    from playwright.sync_api import BrowserContext, Page, sync_playwright
    from playwright.sync_api import TimeoutError as PageTimeout
except ImportError:  # reported by the fixture below, so that collection of other tests goes on
    sync_playwright = None

pytestmark = pytest.mark.browser

#: Generous: two shared cores, a cold Chromium and VP8 encoding in software on both ends.
DEADLINE_MS = 60_000

CHROMIUM_FLAGS = [
    # --headless comes from headless=True and --user-data-dir from launch_persistent_context.
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    # Chromium keeps the last --disable-features: this one replaces Playwright's own list, none of
    # which matters to a page on loopback HTTP.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_processes(profile: Path) -> list[int]:
    """Pids of processes started with this profile directory (the browser and its children)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(profile).encode() in cmdline:
            pids.append(int(entry))
    return pids


@contextmanager
def chromium(*flags: str, **options: Any) -> Iterator[BrowserContext]:
    """Headless Debian Chromium with CHROMIUM_FLAGS and ``flags``; nothing of it may outlive the
    block, nor hold its profile open."""
    binary = require_tool("chromium", install="apt-get install chromium")
    if sync_playwright is None:
        message = "playwright is not installed (install it with: pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile_dir:
        profile = Path(profile_dir)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=binary,
                headless=True,
                args=[*CHROMIUM_FLAGS, *flags],
                timeout=DEADLINE_MS,
                **options,
            )
            try:
                yield context
            finally:
                context.close()
        deadline = time.monotonic() + 20
        while (left := chromium_processes(profile)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"chromium processes left behind: {left}"


@pytest.fixture
def browser() -> Iterator[BrowserContext]:
    with chromium(viewport={"width": 1100, "height": 900}) as context:
        yield context


#: Records the page's WebSockets and every message it sends, to check the protocol from outside.
RECORD_SIGNALING = """
(() => {
  window.sentSignaling = [];
  window.socketsOpened = 0;
  const Native = window.WebSocket;
  const send = Native.prototype.send;
  Native.prototype.send = function (data) {
    window.sentSignaling.push(String(data));
    return send.call(this, data);
  };
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.socketsOpened += 1;
    }
  };
})();
"""


def is_local_address(address: str) -> bool:
    """True for an address of this machine: packets to 127.0.0.1 from it never leave the host."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


def sent_signaling(page: Page) -> list[dict]:
    return [json.loads(text) for text in page.evaluate("() => window.sentSignaling")]


def media_stats(page: Page) -> dict:
    return page.evaluate("() => ({...window.mediaStats})")


def wait_stats(page: Page, condition: str, what: str, unless: str | None = None) -> dict:
    """Wait until a JS condition on ``s`` (window.mediaStats) holds; fail saying what was awaited,
    at once if ``unless`` holds first (a page that gave up will not get there)."""
    predicate = f"!!s && ({condition})"
    try:
        # One evaluation decides both, so a state that moves on a moment later (a page that keeps
        # reconnecting) cannot turn a reached condition into a failure.
        outcome = page.wait_for_function(
            f"() => {{ const s = window.mediaStats; if ({predicate}) return 'reached';"
            f" return !!s && ({unless or 'false'}) ? 'gave up' : false; }}",
            timeout=DEADLINE_MS,
            polling=100,
        ).json_value()
        problem = "" if outcome == "reached" else "the page gave up"
    except PageTimeout:
        problem = f"not within {DEADLINE_MS} ms"
    if problem:
        log = page.locator("#log").inner_text()
        raise AssertionError(f"{what}: {problem}; mediaStats={media_stats(page)}\npage events:\n{log}")
    return media_stats(page)


#: `media-service --dev`: an ephemeral secret (no MEDIA_AUTH_SECRET_FILE), as `make run` starts it.
DEV = {"args": ["--dev"], "env": {"MEDIA_AUTH_SECRET_FILE": ""}}


def dev_address(media: MediaProcess, timeout: float = 10) -> str:
    """The page address development mode prints once it listens."""
    deadline = time.monotonic() + timeout
    while not (found := re.search(r"development mode; open (http://\S+)", media.log())):
        assert time.monotonic() < deadline, f"no address printed:\n{media.log()}"
        time.sleep(0.05)
    return found.group(1)


def open_page(browser: BrowserContext, media: MediaProcess, problems: list[str]) -> Page:
    page = browser.new_page()
    page.add_init_script(RECORD_SIGNALING)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    address = dev_address(media)
    assert address.startswith(f"{media.public_url}/?access_token=")
    page.goto(f"{address}&device=chromium")
    assert page.title() == "media-service · echo"
    assert page.locator("#identity").inner_text() == "dev · chromium"  # the token's subject
    assert media_stats(page)["state"] == "idle"
    return page


def test_browser_media_is_echoed(browser: BrowserContext, tmp_path: Path) -> None:
    with media_service(tmp_path, **DEV) as media:
        problems: list[str] = []
        page = open_page(browser, media, problems)
        page.get_by_role("button", name="Start").click()

        stats = wait_stats(
            page, "s.state === 'connected' && s.session", "the session connects", unless="s.state === 'closed'"
        )
        session = stats["session"]
        assert media.metric("media_sessions_active") == 1

        # Echoed video keeps arriving: the byte count grows across stats updates, and frames decode.
        first = wait_stats(page, "s.inboundBytes > 0", "echoed video arrives")["inboundBytes"]
        stats = wait_stats(
            page, f"s.inboundBytes > {first} && s.framesDecoded >= 30", "echoed video keeps arriving and decodes"
        )
        assert stats["framesDecoded"] >= 30
        assert stats["session"] == session
        assert page.locator("#inbound-bytes").get_attribute("data-value") == str(stats["inboundBytes"])
        page.wait_for_function("() => document.getElementById('remote').videoWidth > 0", timeout=DEADLINE_MS)

        # The service offers only 127.0.0.1, so the selected pair ends there; Chromium may send from
        # another address of this host (it ranks loopback last), which still routes over loopback.
        assert stats["remoteAddress"] == "127.0.0.1", stats
        assert is_local_address(stats["localAddress"]), stats
        # The service is the DTLS server. Chromium negotiates the DTLS 1.2 suite it did
        # when the service was the client, and SRTP with AES-GCM (it was AES-CM with HMAC-SHA1-80):
        # as the server, aiortc picks its own first choice of the profiles both support.
        assert stats["dtls"] == {
            "role": "client",
            "cipher": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            "srtpCipher": "SRTP_AEAD_AES_256_GCM",
            "tlsVersion": "FEFD",
        }, stats

        # Signaling as the protocol says: one offer, then candidates trickled only under the session
        # id (those gathered before the answer were held back), ending with a null candidate.
        page.wait_for_function(
            "() => window.sentSignaling.map(t => JSON.parse(t))"
            ".some(m => m.type === 'candidate' && m.candidate === null)",
            timeout=DEADLINE_MS,
        )
        sent = [m for m in sent_signaling(page) if m["type"] != "ping"]
        assert sent[0]["type"] == "offer" and "m=video" in sent[0]["sdp"]
        candidates = sent[1:]
        assert candidates and all(m["type"] == "candidate" and m["session"] == session for m in candidates), sent
        assert candidates[-1]["candidate"] is None
        lines = [m["candidate"] for m in candidates[:-1]]
        assert lines and all(c["candidate"].startswith("candidate:") and c["sdpMid"] is not None for c in lines)
        assert any(" 127.0.0.1 " in c["candidate"] for c in lines), lines
        assert page.locator("#status").inner_text().startswith("connected")

        page.screenshot(path=tmp_path / "echo.png", full_page=True)
        print(
            f"echo: {stats['inboundBytes']} bytes, {stats['framesDecoded']} frames decoded, "
            f"route {page.locator('#route').inner_text()}"
        )

        closed_before = media.metric("media_sessions_closed_total", {"reason": "closed"}) or 0
        page.get_by_role("button", name="Hang up").click()
        wait_stats(page, "s.state === 'closed' && s.session === null", "hang up closes the call")
        assert [m for m in sent_signaling(page) if m["type"] != "ping"][-1] == {"type": "bye", "session": session}
        media.poll_metric("media_sessions_active", lambda v: v == 0, timeout=60)
        assert media.metric("media_sessions_closed_total", {"reason": "closed"}) == closed_before + 1
        assert not page.get_by_role("alert").is_visible()
        assert problems == [], problems
        page.close()


def test_a_page_without_a_token_says_how_to_get_one(browser: BrowserContext, tmp_path: Path) -> None:
    """Opened at the bare address, the page cannot connect, and tells the developer where the
    address with a token is, rather than failing silently."""
    with media_service(tmp_path) as media:
        page = browser.new_page()
        page.goto(f"{media.public_url}/")
        page.get_by_role("button", name="Start").click()
        page.wait_for_function("() => window.mediaStats.state === 'closed'", timeout=DEADLINE_MS)
        assert "needs an access token" in page.get_by_role("alert").inner_text()
        assert media.metric("media_auth_failures_total", {"reason": "missing"}) == 1
        assert media.metric("media_ws_clients") == 0
        page.close()


def test_browser_follows_a_drain(browser: BrowserContext, tmp_path: Path) -> None:
    """A draining server tells the page to go elsewhere: it shows it, leaves its session after
    retry_after seconds and keeps retrying (here there is no other instance) until hung up."""
    with media_service(tmp_path, **DEV) as media:
        problems: list[str] = []
        page = open_page(browser, media, problems)
        page.get_by_role("button", name="Start").click()
        session = wait_stats(
            page, "s.state === 'connected' && s.session", "the session connects", unless="s.state === 'closed'"
        )["session"]
        closed_before = media.metric("media_sessions_closed_total", {"reason": "closed"}) or 0

        assert httpx.post(f"{media.admin_url}/admin/drain", timeout=10).status_code == 202
        wait_stats(page, "s.state === 'draining'", "the page shows the drain")
        assert "shutting down" in page.get_by_role("alert").inner_text()

        # After retry_after the page says bye and reconnects; this server refuses it, again and again.
        media.poll_metric("media_sessions_active", lambda v: v == 0, timeout=60)
        assert media.metric("media_sessions_closed_total", {"reason": "closed"}) == closed_before + 1
        wait_stats(page, "window.socketsOpened >= 3 && s.state === 'draining'", "the page retries")
        assert {"type": "bye", "session": session} in sent_signaling(page)
        assert page.get_by_role("button", name="Hang up").is_enabled()

        page.get_by_role("button", name="Hang up").click()
        wait_stats(page, "s.state === 'closed' && s.session === null", "hang up stops the retries")
        assert page.get_by_role("button", name="Start").is_enabled()
        assert media.metric("media_sessions_active") == 0
        assert problems == [], problems
        page.close()


#: The page's video offered as H.264 only, and its peer connections kept for the test to read.
PREFER_H264 = """
(() => {
  window.peers = [];
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.peers.push(this);
    }
    addTrack(track, ...streams) {
      const sender = super.addTrack(track, ...streams);
      if (track.kind === "video") {
        const codecs = RTCRtpSender.getCapabilities("video").codecs;
        const h264 = codecs.filter((c) => c.mimeType === "video/H264");
        const transceiver = this.getTransceivers().find((t) => t.sender === sender);
        transceiver.setCodecPreferences([...h264, ...codecs.filter((c) => c.mimeType === "video/rtx")]);
      }
      return sender;
    }
  };
})();
"""

#: The codecs of the page's last peer connection's video, received and sent, from getStats().
VIDEO_CODECS = """
async () => {
  const report = await window.peers[window.peers.length - 1].getStats();
  const codecs = {};
  report.forEach((s) => {
    if ((s.type === "inbound-rtp" || s.type === "outbound-rtp") && s.kind === "video" && s.codecId) {
      codecs[s.type] = report.get(s.codecId).mimeType;
    }
  });
  return codecs;
}
"""


def test_browser_decodes_forwarded_h264(browser: BrowserContext, tmp_path: Path) -> None:
    """Chromium sends H.264; the service forwards it (it decodes nothing) and Chromium decodes the echo."""
    with media_service(tmp_path, **DEV) as media:
        problems: list[str] = []
        page = browser.new_page()
        page.add_init_script(PREFER_H264)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(f"{dev_address(media)}&device=chromium")
        if not page.evaluate(
            "() => RTCRtpSender.getCapabilities('video').codecs.some(c => c.mimeType === 'video/H264')"
        ):
            pytest.fail("this Chromium has no H.264 encoder (Debian's chromium has one)")
        page.get_by_role("button", name="Start").click()
        wait_stats(page, "s.state === 'connected' && s.session", "the session connects", unless="s.state === 'closed'")
        stats = wait_stats(page, "s.framesDecoded >= 30", "echoed H.264 decodes")
        assert stats["framesDecoded"] >= 30
        assert page.evaluate(VIDEO_CODECS) == {"inbound-rtp": "video/H264", "outbound-rtp": "video/H264"}
        for reason in ("codec", "srtp"):
            assert media.metric("media_forwarded_packets_dropped_total", {"reason": reason}) == 0
        page.get_by_role("button", name="Hang up").click()
        media.poll_metric("media_sessions_active", lambda v: v == 0, timeout=60)
        assert problems == [], problems
        page.close()
