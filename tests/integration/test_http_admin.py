"""Dead letters over HTTP through a real server, on SQLite and PostgreSQL.

The service adds the ``vip`` projection (``park`` policy, no retries) of
:mod:`tests.integration.test_deadletters_cli`, whose handler fails on the customer names in
``BROKEN``. The projection runners run live in the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration import test_deadletters_cli as fixture_service
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve
from tests.integration.test_http_health import register, value

DEAD = "/admin/deadletters"


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    fixture_service.BROKEN.clear()
    fixture_service.BROKEN.update({"Mallory", "Eve"})
    async with serve(database_url, service=fixture_service.service) as served:
        yield served
    fixture_service.BROKEN.clear()


async def parked(api: Served, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        response = await api.client.get(DEAD, params={"status": "parked"})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        if len(items) >= count:
            return items
        assert time.monotonic() < deadline, items
        await asyncio.sleep(0.02)


async def vip_names(api: Served) -> list[str]:
    rows = await api.runtime.backend.read_models.fetch(fixture_service.VIP_ROWS)
    return [row["name"] for row in rows]


async def test_list_retry_and_skip_parked_events(api: Served) -> None:
    for name in ("Ada", "Mallory", "Eve", "Bob"):
        await register(api, name)
    items = await parked(api, 2)
    await api.settle()
    assert [(i["projection"], i["attempts"], i["status"]) for i in items] == [
        ("vip", 1, "parked")
    ] * 2
    assert "cannot project Mallory" in items[0]["error"]
    assert await vip_names(api) == ["Ada", "Bob"]
    health = (await api.client.get("/health/projections")).json()
    vip = next(row for row in health["projections"] if row["name"] == "vip")
    assert vip["parked"] == 2
    assert vip["state"] == "running"  # parking keeps the projection going
    text = (await api.client.get("/metrics")).text
    assert value(text, "cqrskit_projection_parked_events", projection="vip") == 2

    mallory, eve = items
    still = await api.client.post(f"{DEAD}/vip/{mallory['stream_id']}/retry")
    assert still.status_code == 200
    assert still.json()["applied"] == 0
    assert "cannot project Mallory" in still.json()["error"]

    fixture_service.BROKEN.discard("Mallory")  # the fix
    done = await api.client.post(f"{DEAD}/vip/{mallory['stream_id']}/retry")
    assert done.status_code == 200, done.text
    assert done.json() == {
        "projection": "vip",
        "stream_id": mallory["stream_id"],
        "applied": 1,
        "skipped": 0,
        "remaining": 0,
        "error": None,
    }
    assert await vip_names(api) == ["Ada", "Bob", "Mallory"]
    again = await api.client.post(f"{DEAD}/vip/{mallory['stream_id']}/retry")
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")

    skipped = await api.client.post(f"{DEAD}/vip/{eve['stream_id']}/skip", params={"id": eve["id"]})
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["skipped"] == 1
    listed = (await api.client.get(DEAD, params={"projection": "vip"})).json()["items"]
    assert [(i["id"], i["status"]) for i in listed] == [(eve["id"], "skipped")]
    assert (await api.client.get(DEAD, params={"status": "parked"})).json()["items"] == []
    assert await vip_names(api) == ["Ada", "Bob", "Mallory"]


async def test_bad_input_gets_problem_responses(api: Served) -> None:
    await register(api, "Mallory")
    (item,) = await parked(api, 1)
    stream = item["stream_id"]
    cases = [
        ("GET", DEAD, {"projection": "nope"}, 404),
        ("GET", DEAD, {"status": "lost"}, 422),
        ("GET", DEAD, {"projection": ""}, 422),
        ("POST", f"{DEAD}/nope/{stream}/retry", None, 404),
        ("POST", f"{DEAD}/nope/{stream}/skip", None, 404),
        ("POST", f"{DEAD}/vip/no-such-stream/retry", None, 404),
        ("POST", f"{DEAD}/vip/{stream}/skip", {"id": "x1"}, 422),
        ("POST", f"{DEAD}/vip/{stream}/skip", {"id": "1e3"}, 422),
        ("POST", f"{DEAD}/vip/{stream}/skip", {"id": str(item["id"] + 1000)}, 404),
        ("POST", f"{DEAD}/vip/{stream}/bounce", None, 404),
        ("GET", f"{DEAD}/vip/{stream}/retry", None, 405),
    ]
    for method, path, params, status in cases:
        response = await api.client.request(method, path, params=params)
        assert response.status_code == status, (method, path, params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Traceback" not in response.text
        assert "SELECT" not in response.text
    # Nothing was settled by the bad requests.
    assert [i["id"] for i in await parked(api, 1)] == [item["id"]]
