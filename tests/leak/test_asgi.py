from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from media_service.leak.asgi import OwnRequests
from media_service.leak.ownership import Owner, OwnerState, TaskOwnership, current_owner


@pytest.fixture
async def http(ownership: TaskOwnership) -> AsyncIterator[httpx.AsyncClient]:
    async def inspect(request: Request) -> JSONResponse:
        task = asyncio.current_task()
        assert task is not None
        owner = ownership.owner_of(task)
        child = asyncio.create_task(asyncio.sleep(0))
        await child
        child_owner = ownership.owner_of(child)
        return JSONResponse(
            {
                "task_owner": owner.name if owner else None,
                "child_is_same_owner": child_owner is owner,
                "state": ownership.state_of(task, 0.0, 1.0),
            }
        )

    app = OwnRequests(Starlette(routes=[Route("/inspect", inspect)]), ownership)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client


async def test_each_request_owns_its_task_and_what_it_starts(http: httpx.AsyncClient) -> None:
    first = (await http.get("/inspect")).json()
    second = (await http.get("/inspect")).json()
    assert first == {"task_owner": "http:1", "child_is_same_owner": True, "state": OwnerState.LIVE.value}
    assert second["task_owner"] == "http:2"


async def test_the_serving_task_is_given_back_afterwards(http: httpx.AsyncClient, ownership: TaskOwnership) -> None:
    task = asyncio.current_task()
    assert task is not None
    mine = Owner("test")
    ownership.adopt(task, mine)
    await http.get("/inspect")
    assert ownership.owner_of(task) is mine
    ownership.disown(task)
    await http.get("/inspect")
    assert ownership.owner_of(task) is None
    assert current_owner() is None
