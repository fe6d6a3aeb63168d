"""Idempotency-Key and If-Match over a real uvicorn, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cqrskit.errors import OperationalError
from cqrskit.idempotency import CommandRecord
from cqrskit.messages import LOG_START
from cqrskit.store.protocol import AppendResult, StreamAppend
from orders.order import Order, OrderCreated
from tests.integration.http_server import Served, serve

ADDRESS = {"street": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url) as served:
        yield served


async def seed(api: Served) -> dict[str, Any]:
    customer = await api.client.post(
        "/api/v1/customers", json={"name": "Ada", "email": "ada@example.com"}
    )
    product = await api.client.post(
        "/api/v1/products", json={"name": "Pen", "unit_price": "2.50", "stock": 1000}
    )
    assert customer.status_code == product.status_code == 201
    return {
        "customer_id": customer.json()["customer_id"],
        "items": [
            {"product_id": product.json()["product_id"], "quantity": 1, "unit_price": "2.50"}
        ],
        "shipping_address": ADDRESS,
    }


async def orders_created(api: Served) -> list[str]:
    await api.visible_head()
    log = await api.runtime.backend.store.read_all(after=LOG_START, limit=10_000)
    return [r.event.order_id for r in log if isinstance(r.event, OrderCreated)]


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def test_retry_returns_the_first_response_and_stores_nothing(api: Served) -> None:
    order = await seed(api)
    first = await api.client.post("/api/v1/orders", json=order, headers=key("order-1"))
    assert first.status_code == 201
    again = await api.client.post("/api/v1/orders", json=order, headers=key("order-1"))
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    fresh = await api.client.post("/api/v1/orders", json=order)
    assert fresh.json()["order_id"] != first.json()["order_id"]
    created = await orders_created(api)
    assert sorted(map(str, created)) == sorted([first.json()["order_id"], fresh.json()["order_id"]])


async def test_key_reused_with_another_payload_is_422(api: Served) -> None:
    order = await seed(api)
    first = await api.client.post("/api/v1/orders", json=order, headers=key("k"))
    assert first.status_code == 201
    other = {**order, "shipping_address": {**ADDRESS, "city": "Shelbyville"}}
    reused = await api.client.post("/api/v1/orders", json=other, headers=key("k"))
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert "Shelbyville" not in reused.text
    elsewhere = await api.client.post(
        f"/api/v1/orders/{first.json()['order_id']}/ship", headers=key("k")
    )
    assert elsewhere.status_code == 422
    assert len(await orders_created(api)) == 1


async def test_retry_after_lost_reply_returns_the_original_response(
    api: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = await seed(api)
    store = api.runtime.backend.store
    append, find = store.append, store.find_command
    state = {"armed": True, "down": False}

    async def lost_reply(
        *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        result = await append(*streams, command=command)
        if state["armed"]:
            state["armed"], state["down"] = False, True
            raise OperationalError("connection lost after COMMIT")
        return result

    async def find_command(scope: str, key: str) -> Any:
        if state["down"]:
            raise OperationalError("database unreachable")
        return await find(scope, key)

    monkeypatch.setattr(store, "append", lost_reply)
    monkeypatch.setattr(store, "find_command", find_command)
    lost = await api.client.post("/api/v1/orders", json=order, headers=key("lost"))
    assert lost.status_code == 503
    state["down"] = False
    retried = await api.client.post("/api/v1/orders", json=order, headers=key("lost"))
    assert retried.status_code == 201
    again = await api.client.post("/api/v1/orders", json=order, headers=key("lost"))
    assert again.json() == retried.json()
    created = await orders_created(api)
    assert [str(c) for c in created] == [retried.json()["order_id"]]
    view = await api.get_eventually(f"/api/v1/orders/{retried.json()['order_id']}")
    assert view.status_code == 200


async def test_concurrent_duplicates_store_once(api: Served) -> None:
    order = await seed(api)
    responses = await asyncio.gather(
        *(api.client.post("/api/v1/orders", json=order, headers=key("dup")) for _ in range(24))
    )
    statuses = {r.status_code for r in responses}
    assert statuses <= {201, 409}, [r.text for r in responses]
    created = [r.json() for r in responses if r.status_code == 201]
    assert created
    assert all(body == created[0] for body in created)
    for conflict in (r for r in responses if r.status_code == 409):
        assert conflict.headers["content-type"] == "application/problem+json"
    assert [str(c) for c in await orders_created(api)] == [created[0]["order_id"]]


async def test_if_match_refuses_a_stale_version(api: Served) -> None:
    order = await seed(api)
    order_id = (await api.client.post("/api/v1/orders", json=order)).json()["order_id"]
    view = await api.get_eventually(f"/api/v1/orders/{order_id}")
    assert view.headers["ETag"] == '"1"'
    item = order["items"][0]
    added = await api.client.post(
        f"/api/v1/orders/{order_id}/items", json=item, headers={"If-Match": '"1"'}
    )
    assert added.status_code == 200
    stale = await api.client.post(
        f"/api/v1/orders/{order_id}/items", json=item, headers={"If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    assert stale.json()["current_version"] == 2
    for bad in ('"0"', "1", 'W/"2"'):
        refused = await api.client.post(
            f"/api/v1/orders/{order_id}/ship", headers={"If-Match": bad}
        )
        assert refused.status_code == 412, bad
    shipped = await api.client.post(f"/api/v1/orders/{order_id}/ship", headers={"If-Match": '"2"'})
    assert shipped.status_code == 200
    stream = Order.stream_id_for(order_id)
    assert [e.version for e in await api.runtime.backend.store.read_stream(stream)] == [1, 2, 3]
    view = await api.client.get(
        f"/api/v1/orders/{order_id}",
        headers={"X-Consistency-Token": shipped.json()["consistency_token"]},
    )
    assert view.headers["ETag"] == '"3"'


async def test_if_match_race_lets_exactly_one_win(api: Served) -> None:
    order = await seed(api)
    order_id = (await api.client.post("/api/v1/orders", json=order)).json()["order_id"]
    item = order["items"][0]
    responses: list[httpx.Response] = await asyncio.gather(
        *(
            api.client.post(
                f"/api/v1/orders/{order_id}/items", json=item, headers={"If-Match": '"1"'}
            )
            for _ in range(16)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [412] * 15
    stream = Order.stream_id_for(order_id)
    assert [e.version for e in await api.runtime.backend.store.read_stream(stream)] == [1, 2]
