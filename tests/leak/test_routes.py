"""The admin routes through a real Starlette app, served in-process over httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from media_service.leak.detector import LeakDetector, LeakSettings
from media_service.leak.routes import leak_routes


@pytest.fixture
async def detector(no_task_leak: None) -> AsyncIterator[LeakDetector]:
    async with LeakDetector(LeakSettings(sample_interval=0.05, baseline_samples=2), fault_limit=100) as started:
        yield started


def client(detector: LeakDetector, *, fault_injection: bool) -> httpx.AsyncClient:
    app = Starlette(routes=leak_routes(detector, fault_injection=fault_injection))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")


async def test_debug_tasks_serves_the_dump(detector: LeakDetector) -> None:
    async with client(detector, fault_injection=False) as http:
        response = await http.get("/debug/tasks")
    assert response.status_code == 200
    body = response.json()
    assert body["tasks"] >= 1
    names = {g["coroutine"] for g in body["groups"]}
    assert "media_service.leak.sampler.LeakSampler.run" in names


async def test_leak_endpoints_are_absent_unless_enabled(detector: LeakDetector) -> None:
    async with client(detector, fault_injection=False) as http:
        assert (await http.post("/debug/leak", params={"tasks": "5"})).status_code == 404
        assert (await http.delete("/debug/leak")).status_code == 404
    assert detector.faults.active == 0


async def test_post_and_delete_debug_leak(detector: LeakDetector) -> None:
    async with client(detector, fault_injection=True) as http:
        started = await http.post("/debug/leak", params={"tasks": "30"})
        assert started.status_code == 200
        assert started.json() == {"started": 30, "active": 30}
        dump = (await http.get("/debug/tasks")).json()
        top = dump["groups"][0]
        assert (top["coroutine"], top["owner"], top["count"]) == (
            "media_service.leak.faults.injected_leak",
            "unowned",
            30,
        )
        stopped = await http.delete("/debug/leak")
        assert stopped.json() == {"stopped": 30, "active": 0}


@pytest.mark.parametrize("query", [{}, {"tasks": "x"}, {"tasks": "0"}, {"tasks": "101"}])
async def test_bad_leak_requests_get_400_and_start_nothing(detector: LeakDetector, query: dict[str, str]) -> None:
    async with client(detector, fault_injection=True) as http:
        response = await http.post("/debug/leak", params=query)
    assert response.status_code == 400
    assert response.json()["error"]
    assert detector.faults.active == 0


async def test_an_orphaned_drill_shows_as_orphans(detector: LeakDetector) -> None:
    async with client(detector, fault_injection=True) as http:
        started = await http.post("/debug/leak", params={"tasks": "12", "orphaned": "1"})
        assert started.status_code == 200, started.text
        top = (await http.get("/debug/tasks", params={"identities": "1"})).json()["groups"][0]
        assert (top["coroutine"], top["owner"], top["count"], top["owner_names"]) == (
            "media_service.leak.faults.injected_leak",
            "orphaned",
            12,
            ["fault-injection"],
        )
        assert (await http.post("/debug/leak", params={"tasks": "1", "orphaned": "maybe"})).status_code == 400
        assert (await http.delete("/debug/leak")).json() == {"stopped": 12, "active": 0}


async def test_debug_tasks_as_text_lists_groups_largest_first(detector: LeakDetector) -> None:
    detector.faults.start(7)
    async with client(detector, fault_injection=False) as http:
        text = (await http.get("/debug/tasks", params={"format": "text"})).text
        bad = await http.get("/debug/tasks", params={"format": "xml"})
    lines = text.splitlines()
    assert lines[0].endswith("threads") and "tasks" in lines[0]
    groups = [line for line in lines if " × " in line and not line.startswith(" ")]
    assert groups[0].startswith("7 × ") and "injected_leak [unowned]" in groups[0]
    first_stack = lines[lines.index(groups[0]) + 1]
    assert first_stack.startswith("    ") and "injected_leak" in first_stack
    assert bad.status_code == 400
