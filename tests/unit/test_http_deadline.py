"""The request deadline: past it a request gets 503 problem+json, never a hang."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from cqrskit.http.deadline import RequestDeadline
from cqrskit.http.problems import PROBLEM_JSON

BOUND = 10.0
"""Upper bound for the client (a bound, not a timing assertion)."""


def app_taking(seconds: float, *, stream: bool = False) -> RequestDeadline:
    """An app answering 200 after ``seconds`` (with ``stream``: starts, then waits)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if not stream:
            await asyncio.sleep(seconds)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if stream:
            await asyncio.sleep(seconds)
        await send({"type": "http.response.body", "body": b"done"})

    return RequestDeadline(app, seconds=0.2)


async def get(app: RequestDeadline, timeout: float = BOUND) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=timeout) as c:
        return await c.get("/slow")


async def test_a_request_past_its_deadline_gets_503_with_retry_after() -> None:
    response = await get(app_taking(60.0))
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["retry-after"].isdigit()
    assert response.json()["type"] == "urn:cqrskit:problem:timeout"


async def test_a_request_within_its_deadline_is_untouched() -> None:
    response = await get(app_taking(0.0))
    assert (response.status_code, response.text) == (200, "done")


async def test_a_started_response_is_left_to_finish() -> None:
    response = await get(app_taking(0.4, stream=True))
    assert (response.status_code, response.text) == (200, "done")


async def test_a_request_slow_to_unwind_still_gets_its_503() -> None:
    release = asyncio.Event()

    async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()  # like a driver waiting on a dead socket
            raise

    try:
        # The client's timeout bounds the wait: without the 503 it fails with ReadTimeout.
        response = await get(RequestDeadline(stuck, seconds=0.2), timeout=3.0)
    finally:
        release.set()
    assert response.status_code == 503
