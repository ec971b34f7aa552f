"""The admin port and the protocols keep to their own: /debug/tasks names
no session or user unless asked, WHIP acts only on WHIP sessions, and browsers' WebSockets come
only from allowed origins."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.media_process import auth_header, media_service_async
from tests.support.peers import SignalingClient, open_session


async def test_debug_tasks_redacts_identities_unless_asked(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path) as media:
        client = await SignalingClient.connect(media.ws_url, user="alice-secret", device="phone-secret")
        peer = await open_session(client)
        async with httpx.AsyncClient(base_url=media.admin_url) as admin:
            plain = (await admin.get("/debug/tasks")).text
            text = (await admin.get("/debug/tasks", params={"format": "text"})).text
            asked = (await admin.get("/debug/tasks", params={"identities": "1"})).text
            assert (await admin.get("/debug/tasks", params={"identities": "maybe"})).status_code == 400
        for dump in (plain, text):
            assert peer.session not in dump and "alice-secret" not in dump and "phone-secret" not in dump
        assert peer.session in asked and "alice-secret" in asked
        await peer.close()
        await client.close()


async def test_whip_cannot_touch_a_websocket_session(tmp_path: Path, no_leaks: None) -> None:
    async with media_service_async(tmp_path) as media:
        client = await SignalingClient.connect(media.ws_url)
        peer = await open_session(client)
        async with httpx.AsyncClient(base_url=media.public_url, headers=auth_header()) as http:  # the same user
            patched = await http.patch(
                f"/whip/{peer.session}",
                content="a=end-of-candidates\r\n",
                headers={"content-type": "application/trickle-ice-sdpfrag"},
            )
            deleted = await http.delete(f"/whip/{peer.session}")
        assert (patched.status_code, deleted.status_code) == (404, 404)
        assert await peer.echo("still mine") == "still mine"
        assert media.metric("media_sessions_active") == 1
        await peer.close()
        await client.close()


@pytest.mark.parametrize(
    ("allowed", "origin", "admitted"),
    [
        ("", "http://evil.example", False),
        ("", "same", True),  # the service's own page (the demo)
        ("https://app.example.org", "https://app.example.org", True),
        ("https://app.example.org", "same", False),
        ("*", "http://evil.example", True),
        ("", None, True),  # not a browser
    ],
)
async def test_browser_websockets_only_from_allowed_origins(
    tmp_path: Path, no_leaks: None, allowed: str, origin: str | None, admitted: bool
) -> None:
    async with media_service_async(tmp_path, env={"MEDIA_ALLOWED_ORIGINS": allowed}) as media:
        headers = auth_header()
        if origin is not None:
            headers["Origin"] = media.public_url if origin == "same" else origin
        url = f"{media.ws_url}?device=d"
        if admitted:
            async with connect(url, additional_headers=headers) as ws:
                await ws.send('{"type": "ping"}')
                assert await ws.recv() == '{"type":"pong"}'
        else:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
