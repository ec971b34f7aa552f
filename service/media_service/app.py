"""The two ASGI apps: the public one (demo page, signaling, WHIP) and the admin one (health,
readiness, metrics, debug, drain). Admin routes never exist on the public listener."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from importlib.resources import files
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from media_service.auth import NAME, AuthError
from media_service.connections import ConnectionLimiter, forwarded_client
from media_service.core import MediaService
from media_service.errors import ErrorCode
from media_service.leak.asgi import OwnRequests
from media_service.leak.routes import leak_routes
from media_service.lifecycle import RETRY_AFTER_SECONDS
from media_service.signaling import SignalingConnection
from media_service.whip import auth_refusal, whip_routes


class WebSocketSink:
    """What the hub writes to: one Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def send_text(self, data: str) -> None:
        await self._websocket.send_text(data)

    async def close(self, code: int, reason: str) -> None:
        if self._websocket.application_state is not WebSocketState.DISCONNECTED:
            await self._websocket.close(code, reason)


def origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...]) -> bool:
    """A browser's page may open /ws only from an allowed origin: by default the service's own
    (the demo page), else those listed; ``*`` allows any. Clients that are not browsers send no
    Origin and are not concerned."""
    if "*" in allowed:
        return True
    if allowed:
        return origin.rstrip("/").lower() in (a.lower() for a in allowed)
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


async def signaling(websocket: WebSocket) -> None:
    service: MediaService = websocket.app.state.service
    forwarded: ConnectionLimiter = websocket.app.state.forwarded
    settings = service.settings
    client_address = forwarded_client(
        websocket.client.host if websocket.client else None,
        websocket.headers.get("x-forwarded-for"),
        frozenset(settings.trusted_proxies),
    )
    # Behind a trusted proxy every client has its address: the per-address cap counts the client
    # the proxy names instead (directly connected clients are counted on accept).
    if client_address is not None and forwarded.admit(websocket, client_address) is not None:
        service.metrics.connections_refused.labels(reason="address").inc()
        await websocket.send_denial_response(
            JSONResponse(
                {
                    "error": ErrorCode.RATE_LIMITED,
                    "message": f"more than MEDIA_MAX_CONNECTIONS_PER_ADDRESS ({settings.max_connections_per_address}) "
                    "connections from this address",
                },
                status_code=429,
            )
        )
        return
    try:
        await _signaling(websocket, service)
    finally:
        forwarded.release(websocket)


async def _signaling(websocket: WebSocket, service: MediaService) -> None:
    params = websocket.query_params
    origin = websocket.headers.get("origin")
    if origin is not None and not origin_allowed(
        origin, websocket.headers.get("host"), service.settings.allowed_origins
    ):
        await websocket.send_denial_response(
            JSONResponse(
                {
                    "error": ErrorCode.FORBIDDEN,
                    "message": "this page's origin may not open /ws (MEDIA_ALLOWED_ORIGINS)",
                },
                status_code=403,
            )
        )
        return
    # Before the WebSocket is accepted: a refused client costs no hub slot, no task, no session.
    try:
        identity = service.authenticate(
            websocket.headers.get("authorization"),
            params.get("access_token"),
            transport="websocket",
            peer=websocket.client.host if websocket.client else None,
            claimed_user=params.get("user") or None,
        )
    except AuthError as exc:
        await websocket.send_denial_response(auth_refusal(exc))
        return
    user = identity.user
    device = params.get("device") or secrets.token_hex(4)
    await websocket.accept()
    if not (NAME.fullmatch(user) and NAME.fullmatch(device)):
        await websocket.send_json(
            {
                "type": "error",
                "code": ErrorCode.BAD_REQUEST,
                "message": "user and device are 1-128 characters of A-Z a-z 0-9 . _ @ : + -",
            }
        )
        await websocket.close(1008, "invalid user or device")
        return
    if service.lifecycle.draining:
        await websocket.send_json({"type": "draining", "retry_after": RETRY_AFTER_SECONDS})
        await websocket.close(1001, "draining")
        return
    client = service.hub.connect(user, device, WebSocketSink(websocket))
    connection = SignalingConnection(service, client, identity.grants)
    try:
        while not client.closed.is_set():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                await connection.handle_text(message["text"])
            else:
                await connection.handle_binary()
    finally:
        try:
            await connection.close()
        finally:  # even if the close is cancelled (shutdown), the hub must let the client go
            await service.hub.disconnect(client)


async def demo_page(request: Request) -> HTMLResponse:
    return HTMLResponse(files("media_service").joinpath("static/index.html").read_text())


def _owned(service: MediaService) -> list[Middleware]:
    """Each request and WebSocket connection owns its serving task, and with it everything it
    starts outside a session (the hub's writer task, for one): connections in flight are load."""
    return [Middleware(OwnRequests, ownership=service.leaks.ownership)]


def public_app(service: MediaService) -> Starlette:
    app = Starlette(
        middleware=_owned(service),
        routes=[
            Route("/", demo_page, methods=["GET"]),
            WebSocketRoute("/ws", signaling),
            *whip_routes(service),
        ],
    )
    app.state.service = service
    app.state.forwarded = ConnectionLimiter(10**9, service.settings.max_connections_per_address)
    return app


def admin_app(service: MediaService, start_drain: Callable[[str], None]) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        state = service.lifecycle.state.value
        return JSONResponse({"status": state}, 200 if service.lifecycle.accepting else 503)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def drain(request: Request) -> JSONResponse:
        start_drain("admin")
        return JSONResponse({"status": service.lifecycle.state.value, "sessions": len(service.sessions)}, 202)

    app = Starlette(
        middleware=_owned(service),
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/drain", drain, methods=["POST"]),
            *leak_routes(service.leaks, fault_injection=service.settings.fault_injection),
        ],
    )
    app.state.service = service
    return app
