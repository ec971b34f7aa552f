"""WHIP (RFC 9725): POST an SDP offer, PATCH trickled candidates, DELETE to end the session."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from media_common import logs
from media_service.auth import AuthError, Identity
from media_service.bus import BusUnavailable, LocalBus
from media_service.errors import HTTP_STATUS, ErrorCode
from media_service.forward import Forwarder, ForwardFailed
from media_service.lifecycle import RETRY_AFTER_SECONDS
from media_service.sessions import BadRequest, SessionError, UnknownSession

if TYPE_CHECKING:
    from media_service.core import MediaService

log = logs.get("media_service.whip")

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, If-Match, Authorization",
    "Access-Control-Expose-Headers": "Location, ETag, Accept-Patch, Retry-After, WWW-Authenticate",
}


class PayloadTooLarge(Exception):
    pass


def parse_sdpfrag(body: str) -> list[dict[str, Any] | None]:
    """Candidates of a trickle-ice-sdpfrag body (RFC 8840) as RTCIceCandidateInit dicts, in order;
    ``None`` stands for ``a=end-of-candidates``. The media section's ``a=mid`` applies to the
    candidate lines that follow it."""
    candidates: list[dict[str, Any] | None] = []
    mid: str | None = None
    index = -1
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        elif line.startswith("a=candidate:"):
            candidates.append(
                {
                    "candidate": line.removeprefix("a="),
                    "sdpMid": mid,
                    "sdpMLineIndex": max(index, 0) if mid is None else None,
                }
            )
        elif line == "a=end-of-candidates":
            candidates.append(None)
    return candidates


def error(code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, HTTP_STATUS[code], {**CORS, **(headers or {})})


def auth_refusal(exc: AuthError) -> JSONResponse:
    """The answer to a refused token, for WHIP and for the WebSocket handshake alike: 401 with the
    reason (RFC 6750: no error code when no token came), 403 for a token of another user."""
    if exc.reason == "user_mismatch":
        return JSONResponse({"error": ErrorCode.FORBIDDEN, "reason": exc.reason, "message": str(exc)}, 403, CORS)
    challenge = 'Bearer realm="media-service"'
    if exc.reason != "missing":
        challenge += ', error="invalid_token"'
    body = {"error": "unauthorized", "reason": exc.reason, "message": str(exc)}
    return JSONResponse(body, 401, {**CORS, "WWW-Authenticate": challenge})


def whip_routes(service: MediaService) -> list[Route]:
    limit = service.settings.whip_max_body_bytes

    def authenticate(request: Request) -> Identity:
        """Before the body is read: an unauthenticated request costs no parsing and no session."""
        return service.authenticate(
            request.headers.get("authorization"),
            transport="whip",
            peer=request.client.host if request.client else None,
        )

    def own(session_id: str, identity: Identity) -> None:
        """A session of another user, or one opened over a WebSocket (another connection's, which
        is invisible), answers as one that does not exist: 404, nothing revealed."""
        session = service.sessions.get(session_id)
        if session.via != "whip" or (service.verifier is not None and session.user != identity.user):
            raise UnknownSession(f"no session {session_id!r}")

    async def body_text(request: Request) -> str:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge
            chunks.append(chunk)
        try:
            return b"".join(chunks).decode()
        except UnicodeDecodeError:
            raise BadRequest("body is not UTF-8 text") from None

    async def guarded(request: Request, content_type: str, handler: Callable[[str], Awaitable[Response]]) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != content_type:
            return error(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be {content_type}")
        try:
            return await handler(await body_text(request))
        except PayloadTooLarge:
            return error(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
        except ClientDisconnect:
            return Response(status_code=400)
        except SessionError as exc:
            wait = getattr(exc, "retry_after", None) or RETRY_AFTER_SECONDS  # the truth, when the refusal knows it
            retry = {"Retry-After": str(math.ceil(wait))} if exc.retryable else None
            return error(exc.code, str(exc), retry)
        except Exception:  # a bug: still a JSON answer with CORS, and a traceback in the log
            log.exception("whip_failed", method=request.method, path=request.url.path)
            return error(ErrorCode.INTERNAL, "internal error handling the request")

    async def elsewhere(request: Request, session_id: str) -> Response | None:
        """The answer of the replica holding ``session_id``, when that is another replica; None when
        no replica does (the caller answers as for a session of its own that does not exist)."""
        if session_id in service.sessions or Forwarder.forwarded(request):  # one hop at most
            return None
        try:
            owner = await service.bus.owner(session_id)
        except BusUnavailable as exc:
            service.metrics.whip_forwards.labels(result="unavailable").inc()
            return error(ErrorCode.UNAVAILABLE, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if owner is None or owner == service.settings.public_url:
            if not isinstance(service.bus, LocalBus):
                service.metrics.whip_forwards.labels(result="not_found").inc()
            return None
        try:
            body = (await body_text(request)).encode()
            answer = await service.forwarder.forward(owner, request, body)
        except PayloadTooLarge:
            return error(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
        except ForwardFailed as exc:
            service.metrics.whip_forwards.labels(result="unavailable").inc()
            return error(ErrorCode.UNAVAILABLE, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        except SessionError as exc:  # a body that is not UTF-8
            return error(exc.code, str(exc))
        service.metrics.whip_forwards.labels(result="ok").inc()
        answer.headers.update(CORS)
        return answer

    async def create(request: Request) -> Response:
        try:
            identity = authenticate(request)
        except AuthError as exc:
            return auth_refusal(exc)
        if not identity.grants.publish:
            return error(ErrorCode.FORBIDDEN, "the access token does not grant publish")

        async def handle(sdp: str) -> Response:
            session, answer = await service.sessions.open(
                sdp, user=identity.user, on_closed=lambda s, _: service.bus.release(s.id), via="whip"
            )
            # Recorded before the answer goes out: the client's next request may reach any replica.
            await service.bus.claim(session.id)
            if session.id not in service.sessions:  # it ended meanwhile: its record must not outlive it
                service.bus.release(session.id)
            return Response(
                answer,
                201,
                {**CORS, "Location": f"/whip/{session.id}", "ETag": f'"{session.id}"', "Accept-Patch": SDPFRAG},
                media_type=SDP,
            )

        return await guarded(request, SDP, handle)

    async def trickle(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            identity = authenticate(request)
        except AuthError as exc:
            return auth_refusal(exc)
        # Another replica's session: its owner checks the token's user, as for its own.
        if (forwarded := await elsewhere(request, session_id)) is not None:
            return forwarded

        async def handle(body: str) -> Response:
            own(session_id, identity)  # 404 before parsing
            for candidate in parse_sdpfrag(body):
                await service.sessions.add_candidate(session_id, candidate)
            return Response(status_code=204, headers=CORS)

        return await guarded(request, SDPFRAG, handle)

    async def delete(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        try:
            identity = authenticate(request)
        except AuthError as exc:
            return auth_refusal(exc)
        if (forwarded := await elsewhere(request, session_id)) is not None:
            return forwarded
        try:
            own(session_id, identity)
        except UnknownSession:
            return error(ErrorCode.UNKNOWN_SESSION, "no such session")
        if not await service.sessions.close(session_id, "closed"):
            return error(ErrorCode.UNKNOWN_SESSION, "no such session")
        return Response(status_code=200, headers=CORS)

    async def options(request: Request) -> Response:
        return Response(status_code=204, headers={**CORS, "Accept-Post": SDP, "Accept-Patch": SDPFRAG})

    return [
        Route("/whip", create, methods=["POST"]),
        Route("/whip", options, methods=["OPTIONS"]),
        Route("/whip/{session_id}", trickle, methods=["PATCH"]),
        Route("/whip/{session_id}", delete, methods=["DELETE"]),
        Route("/whip/{session_id}", options, methods=["OPTIONS"]),
    ]
