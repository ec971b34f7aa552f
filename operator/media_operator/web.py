"""The operator's HTTP server: GET /metrics, GET /healthz, POST /alertmanager."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from media_common import logs
from media_operator.alerts import AlertTriage, InvalidPayload, parse_notification
from media_operator.controller import Controller

log = logs.get("media_operator.web")

MAX_PAYLOAD = 1024 * 1024  # Alertmanager groups can be large, but not this large


def build_app(
    controller: Controller, triage: AlertTriage, token: str | None, in_scope: Callable[[tuple[str, str]], bool]
) -> web.Application:
    retry_after = controller.settings.scrape_interval
    app = web.Application(client_max_size=MAX_PAYLOAD)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(controller.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        if controller.healthy():
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "control loop stalled"}, status=503)

    async def alertmanager(request: web.Request) -> web.Response:
        assert token is not None
        given = request.headers.get("Authorization", "")
        if not given.isascii():  # its bytes could not even be compared: malformed, not unauthorised
            return web.json_response({"error": "the Authorization header is not ASCII"}, status=400)
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response(
                {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        if not controller.listed.is_set():
            # Not every pod is known yet: "not in scope" could be wrong. Alertmanager retries a 5xx.
            return web.json_response(
                {"error": "starting: the pod list is not complete yet"},
                status=503,
                headers={"Retry-After": str(max(1, round(retry_after)))},
            )
        try:
            alerts = parse_notification(await request.json())
        except (ValueError, RecursionError) as exc:  # JSON errors, nesting too deep, InvalidPayload
            message = (
                str(exc)
                if isinstance(exc, InvalidPayload)
                else "body is nested too deep"
                if isinstance(exc, RecursionError)
                else "body is not JSON"
            )
            return web.json_response({"error": message}, status=400)
        result = triage.triage(alerts, in_scope)
        for key in result.accepted:
            controller.alert(key)
        if result.accepted or result.ignored:
            log.info(
                "alertmanager_notification",
                accepted=[f"{ns}/{pod}" for ns, pod in result.accepted],
                ignored=[f"{what}: {why}" for what, why in result.ignored],
            )
        # 200 for ignored alerts too: Alertmanager must not retry what was deliberately left alone.
        return web.json_response(
            {
                "accepted": [f"{ns}/{pod}" for ns, pod in result.accepted],
                "ignored": [{"alert": what, "reason": why} for what, why in result.ignored],
            }
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    if token:
        app.router.add_post("/alertmanager", alertmanager)
    return app
