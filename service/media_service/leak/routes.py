"""Admin routes of the leak detector: ``GET /debug/tasks`` and, for fire drills only,
``POST /debug/leak?tasks=N[&orphaned=1]`` and ``DELETE /debug/leak``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from media_service.leak.detector import LeakDetector
from media_service.leak.faults import parse_flag, parse_task_count
from media_service.leak.taskdump import dump_text


def leak_routes(detector: LeakDetector, *, fault_injection: bool) -> list[Route]:
    async def debug_tasks(request: Request) -> Response:
        fmt = request.query_params.get("format", "json")
        try:
            identities = parse_flag(request.query_params.get("identities"))
        except ValueError as exc:
            return JSONResponse({"error": f"identities: {exc}"}, status_code=400)
        if fmt == "text":
            return PlainTextResponse(dump_text(detector.dump(identities=identities)))
        if fmt != "json":
            return JSONResponse({"error": "format is json or text"}, status_code=400)
        return JSONResponse(detector.dump(identities=identities))

    async def start_leak(request: Request) -> JSONResponse:
        try:
            count = parse_task_count(request.query_params.get("tasks"), detector.faults.limit)
            orphaned = parse_flag(request.query_params.get("orphaned"))
            active = detector.faults.start(count, orphaned=orphaned)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"started": count, "active": active})

    async def stop_leak(request: Request) -> JSONResponse:
        return JSONResponse({"stopped": await detector.faults.stop(), "active": detector.faults.active})

    routes = [Route("/debug/tasks", debug_tasks, methods=["GET"])]
    if fault_injection:
        routes.append(Route("/debug/leak", start_leak, methods=["POST"]))
        routes.append(Route("/debug/leak", stop_leak, methods=["DELETE"]))
    return routes
