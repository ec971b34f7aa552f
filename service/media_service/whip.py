"""WHIP (RFC 9725): POST an SDP offer, PATCH trickled candidates, DELETE to end the session.

PATCH is conditional, as RFC 9725 §4.3.1 asks: the 201's ``ETag`` names the ICE session (a hash of
the service's ICE credentials in the answer), a trickle PATCH must carry it in ``If-Match`` (428
without, 412 when it names another), and ``If-Match: "*"`` asks for an ICE restart, which this
service answers with 422: aiortc (aioice) cannot restart ICE on a live connection, so the ICE
session goes on untouched, as the RFC requires of a restart that cannot be satisfied.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

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
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Retry-After, WWW-Authenticate",
}
#: An entity tag (RFC 9110 §8.8.3), optionally weak, in a comma-separated If-Match list.
ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*')
#: ICE credentials (RFC 8839 §5.4): ice-char is ALPHA / DIGIT / "+" / "/".
ICE_UFRAG = re.compile(r"[A-Za-z0-9+/]{4,256}")
ICE_PWD = re.compile(r"[A-Za-z0-9+/]{22,256}")
ANY = "*"


class PayloadTooLarge(Exception):
    pass


class PreconditionRequired(SessionError):
    code = ErrorCode.PRECONDITION_REQUIRED


class PreconditionFailed(SessionError):
    code = ErrorCode.PRECONDITION_FAILED


class RestartUnsupported(SessionError):
    code = ErrorCode.ICE_RESTART_UNSUPPORTED


def ice_etag(sdp: str) -> str:
    """The entity tag of an ICE session: a hash of the first ``a=ice-ufrag`` and ``a=ice-pwd`` of
    the service's SDP, quoted. It changes exactly when the ICE session does; the password stays
    secret."""
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.MULTILINE)
    credentials = f"{ufrag.group(1) if ufrag else ''}:{pwd.group(1) if pwd else ''}"
    return '"' + hashlib.sha256(credentials.encode()).hexdigest()[:32] + '"'


def parse_if_match(value: str) -> str | list[str]:
    """An If-Match field: ``"*"`` (ANY), or its entity tags as written (weak ones keep ``W/``);
    BadRequest for anything else."""
    if value.strip() == ANY:
        return ANY
    tags: list[str] = []
    for item in value.split(","):
        match = ENTITY_TAG.fullmatch(item)
        if match is None:
            raise BadRequest('If-Match must be "*" or entity tags in double quotes, as the ETag was sent')
        tags.append(item.strip())
    return tags


def strong_match(tags: Sequence[str], etag: str) -> bool:
    """RFC 9110 §13.1.1: If-Match compares strongly; a weak tag never matches."""
    return etag in tags


def restart_credentials(fragment: str) -> tuple[str, str]:
    """The new ICE ufrag and password of an ICE restart request's sdpfrag (RFC 8840); BadRequest
    when it has none, or invalid ones."""
    ufrag = re.search(r"^a=ice-ufrag:(.*)$", fragment, re.MULTILINE)
    pwd = re.search(r"^a=ice-pwd:(.*)$", fragment, re.MULTILINE)
    if ufrag is None or pwd is None:
        raise BadRequest('an ICE restart (If-Match: "*") needs a=ice-ufrag and a=ice-pwd in the sdpfrag')
    if not ICE_UFRAG.fullmatch(ufrag.group(1).strip()) or not ICE_PWD.fullmatch(pwd.group(1).strip()):
        raise BadRequest("the sdpfrag's ice-ufrag (4-256) or ice-pwd (22-256) is not of ice-chars")
    return ufrag.group(1).strip(), pwd.group(1).strip()


def quoted(value: str) -> str:
    """An RFC 8288 link parameter value as a quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(servers: Sequence[dict[str, Any]]) -> list[str]:
    """``Link: <url>; rel="ice-server"`` values (RFC 9725 §4.6), one per URL; TURN URLs carry the
    server's username and credential, with ``credential-type="password"``."""
    links: list[str] = []
    for server in servers:
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        for url in urls:
            link = f'<{url}>; rel="ice-server"'
            if url.startswith(("turn:", "turns:")) and server.get("username") is not None:
                link += f"; username={quoted(str(server['username']))}"
                link += f"; credential={quoted(str(server.get('credential', '')))}"
                link += '; credential-type="password"'
            links.append(link)
    return links


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


class MethodNotAllowed:
    """405 with CORS headers and ``Allow``, for the methods a WHIP path does not take: Starlette's
    own 405 has no CORS headers, and a browser client would see an opaque network error. An ASGI
    app rather than a function, so that its route matches every method; it is listed after the
    path's own routes, which win for theirs."""

    def __init__(self, allow: str) -> None:
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "")
        response = error(ErrorCode.METHOD_NOT_ALLOWED, f"{method} is not allowed here", {"Allow": self.allow})
        await response(scope, receive, send)


def whip_routes(service: MediaService) -> list[Route]:
    limit = service.settings.whip_max_body_bytes
    links = ice_server_links(service.settings.ice_servers)

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
            response = Response(
                answer,
                201,
                {**CORS, "Location": f"/whip/{session.id}", "ETag": ice_etag(answer), "Accept-Patch": SDPFRAG},
                media_type=SDP,
            )
            for link in links:  # on the 201 only: never on a CORS preflight
                response.headers.append("Link", link)
            return response

        return await guarded(request, SDP, handle)

    async def answered_here(request: Request, session_id: str) -> Identity | Response:
        """The token's identity when this replica answers for ``session_id``; otherwise the answer to
        send: the refusal of a bad token, or the owner's answer from another replica (the owner
        checks the token's user, as for a session of its own)."""
        try:
            identity = authenticate(request)
        except AuthError as exc:
            return auth_refusal(exc)
        forwarded = await elsewhere(request, session_id)
        return identity if forwarded is None else forwarded

    async def trickle(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        identity = await answered_here(request, session_id)
        if isinstance(identity, Response):
            return identity

        async def handle(body: str) -> Response:
            own(session_id, identity)  # 404 before anything else
            if_match = request.headers.get("if-match")
            if if_match is None:
                raise PreconditionRequired('a PATCH needs If-Match: the ETag of the 201, or "*" for an ICE restart')
            tags = parse_if_match(if_match)
            if tags == ANY:
                restart_credentials(body)  # a malformed restart request is a 400, as any bad body
                raise RestartUnsupported(
                    "ICE restarts are not supported; the ICE session goes on. To move to another network, "
                    "DELETE this session and POST a new offer"
                )
            if not strong_match(tags, ice_etag(service.sessions.get(session_id).answer)):
                raise PreconditionFailed("If-Match does not name this session's ICE session (its ETag)")
            await service.sessions.add_candidates(session_id, parse_sdpfrag(body))  # all or none
            return Response(status_code=204, headers=CORS)

        return await guarded(request, SDPFRAG, handle)

    async def delete(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        identity = await answered_here(request, session_id)
        if isinstance(identity, Response):
            return identity
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
        Route("/whip", MethodNotAllowed("POST, OPTIONS")),
        Route("/whip/{session_id}", MethodNotAllowed("PATCH, DELETE, OPTIONS")),
    ]
