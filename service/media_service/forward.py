"""Forward a request on a WHIP session to the replica that holds the session.

The owner's address comes from the bus (Redis), never from the request. A forwarded request carries
``X-Media-Forwarded`` and is never forwarded again: one hop at most, so two replicas that disagree
about an owner cannot pass a request back and forth.
"""

from __future__ import annotations

import httpx
from starlette.requests import Request
from starlette.responses import Response

from media_common import logs

log = logs.get("media_service.forward")

FORWARDED = "x-media-forwarded"
#: The request headers the owner needs, and the response headers the client needs back.
PASSED = ("content-type", "if-match", "authorization")
RETURNED = ("content-type", "etag", "location", "retry-after", "www-authenticate", "accept-patch")
TIMEOUT = 5.0
#: The owner answers an SDP fragment or a short JSON error; anything larger is not an answer.
MAX_ANSWER_BYTES = 1024 * 1024


class ForwardFailed(Exception):
    """The owner could not be reached, or gave no usable answer."""


class Forwarder:
    def __init__(self, max_connections: int = 64) -> None:
        self._client = httpx.AsyncClient(
            timeout=TIMEOUT,
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
            trust_env=False,  # the pod network, never a proxy from the environment
        )

    @staticmethod
    def forwarded(request: Request) -> bool:
        return FORWARDED in request.headers

    async def forward(self, owner: str, request: Request, body: bytes) -> Response:
        headers = {name: request.headers[name] for name in PASSED if name in request.headers}
        headers[FORWARDED] = "1"
        try:
            async with self._client.stream(
                request.method, owner + request.url.path, content=body, headers=headers
            ) as answer:
                content = bytearray()
                async for chunk in answer.aiter_bytes():
                    content += chunk
                    if len(content) > MAX_ANSWER_BYTES:
                        raise ForwardFailed(f"the owner's answer is over {MAX_ANSWER_BYTES} bytes")
        except httpx.HTTPError as exc:
            log.warning("whip_forward_failed", owner=owner, error=f"{type(exc).__name__}: {exc}"[:200])
            raise ForwardFailed(f"the replica holding the session did not answer ({type(exc).__name__})") from None
        kept = {name: answer.headers[name] for name in RETURNED if name in answer.headers}
        return Response(bytes(content), answer.status_code, kept)

    async def aclose(self) -> None:
        await self._client.aclose()
