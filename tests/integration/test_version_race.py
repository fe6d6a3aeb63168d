"""Many concurrent requests on one order: no lost update, every success its own version.

Each AddOrderItem appends with the order version it loaded; a loser reloads and decides again
(``retry_on_conflict``) until its retries run out, then answers 409 problem+json with the
order's current version. The log is the proof: every 2xx's consistency token names an event
of its own, the order's versions are contiguous, and the read model counts every success.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cqrskit.messages import LOG_START, LogPosition
from orders.order import Order, OrderItemAdded
from tests.integration.http_server import Served, serve

ADDRESS = {"street": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}
RACERS = 24


async def place_order(api: Served) -> tuple[str, dict[str, Any]]:
    customer = await api.client.post(
        "/api/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
    )
    product = await api.client.post(
        "/api/v1/products", json={"name": "Pen", "unit_price": "2.50", "stock": 100_000}
    )
    item = {"product_id": product.json()["product_id"], "quantity": 1, "unit_price": "2.50"}
    created = await api.client.post(
        "/api/v1/orders",
        json={
            "customer_id": customer.json()["customer_id"],
            "items": [item],
            "shipping_address": ADDRESS,
        },
    )
    assert created.status_code == 201
    return created.json()["order_id"], item


async def race(api: Served, order_id: str, item: dict[str, Any]) -> list[httpx.Response]:
    return list(
        await asyncio.gather(
            *(api.client.post(f"/api/v1/orders/{order_id}/items", json=item) for _ in range(RACERS))
        )
    )


async def check_no_lost_update(api: Served, order_id: str, responses: list[httpx.Response]) -> int:
    successes = [r for r in responses if r.status_code == 200]
    for failure in (r for r in responses if r.status_code != 200):
        assert failure.status_code == 409, failure.text
        assert failure.headers["content-type"] == "application/problem+json"
        assert isinstance(failure.json()["current_version"], int)
    await api.visible_head()
    log = await api.runtime.backend.store.read_all(after=LOG_START, limit=100_000)
    by_position = {record.position: record.event for record in log}
    versions = []
    for success in successes:
        token = LogPosition.parse(success.json()["consistency_token"])
        # The append's events: one transaction on PostgreSQL, adjacent positions on SQLite.
        appended = [
            event
            for position, event in by_position.items()
            if isinstance(event, OrderItemAdded)
            and (
                position.transaction_id == token.transaction_id
                if token.transaction_id
                else token.position - 2 < position.position <= token.position
            )
        ]
        assert len(appended) == 1
        versions.append(appended[0].version)
    assert len(set(versions)) == len(successes)
    stream = Order.stream_id_for(order_id)
    stored = await api.runtime.backend.store.read_stream(stream)
    assert [e.version for e in stored] == list(range(1, len(successes) + 2))
    assert sorted(versions) == list(range(2, len(successes) + 2))
    await api.settle()
    view = await api.client.get(f"/api/v1/orders/{order_id}")
    assert view.json()["item_count"] == 1 + len(successes)
    assert view.headers["ETag"] == f'"{1 + len(successes)}"'
    return len(successes)


async def test_version_race_loses_no_update(database_url: str) -> None:
    async with serve(database_url) as api:
        order_id, item = await place_order(api)
        responses = await race(api, order_id, item)
        assert await check_no_lost_update(api, order_id, responses) >= 1


@pytest.mark.parametrize("retries", [1])
async def test_exhausted_retries_answer_409_with_current_version(
    database_url: str, retries: int
) -> None:
    async with serve(database_url, command_retries=retries) as api:
        order_id, item = await place_order(api)
        conflicts = 0
        for _ in range(5):
            responses = await race(api, order_id, item)
            conflicts += sum(r.status_code == 409 for r in responses)
            order_id_successes = await check_no_lost_update(api, order_id, responses)
            assert order_id_successes >= 1
            order_id, item = await place_order(api)
        assert conflicts > 0
