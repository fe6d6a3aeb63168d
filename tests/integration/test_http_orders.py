"""The orders API through a real uvicorn server, on SQLite and on PostgreSQL.

The walk-through is the one a new user follows: register customers and products, place an
order, add an item, read it back, list, search, get statistics, cancel one order and ship
another. Read models are eventually consistent, so reads wait (bounded) for projections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest

from cqrskit.messages import LogPosition
from tests.integration.http_server import Served, serve

API = "/api/v1"
ADDRESS = {"street": "1 Canal Street", "city": "Amsterdam", "postal_code": "1011", "country": "NL"}


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url) as served:
        yield served


def created(response: httpx.Response, key: str) -> str:
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {key, "consistency_token"}
    assert response.headers["x-consistency-token"] == body["consistency_token"]
    return str(UUID(body[key]))


def accepted(response: httpx.Response, status: str) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["consistency_token"]
    assert response.headers["x-consistency-token"] == body["consistency_token"]
    return body


async def customer(api: Served, name: str, email: str) -> str:
    response = await api.client.post(f"{API}/customers", json={"name": name, "email": email})
    return created(response, "customer_id")


async def product(api: Served, name: str, price: str, stock: int) -> str:
    response = await api.client.post(
        f"{API}/products", json={"name": name, "unit_price": price, "stock": stock}
    )
    return created(response, "product_id")


async def order(api: Served, customer_id: str, *items: tuple[str, int, str]) -> str:
    body = {
        "customer_id": customer_id,
        "items": [{"product_id": p, "quantity": q, "unit_price": u} for p, q, u in items],
        "shipping_address": ADDRESS,
    }
    return created(await api.client.post(f"{API}/orders", json=body), "order_id")


async def test_new_user_walk_through(api: Served) -> None:
    ada = await customer(api, "Ada Lovelace", "ada@example.com")
    bob = await customer(api, "Bob Builder", "bob@example.com")
    widget = await product(api, "Blue Widget", "19.99", 10)
    gadget = await product(api, "Red Gadget", "5.50", 100)

    first = await order(api, ada, (widget, 2, "19.99"))
    added = accepted(
        await api.client.post(
            f"{API}/orders/{first}/items",
            json={"product_id": gadget, "quantity": 3, "unit_price": "5.50"},
        ),
        "item_added",
    )
    assert added["order_id"] == first

    await api.settle()
    view = (await api.client.get(f"{API}/orders/{first}")).json()
    assert view["id"] == first
    assert view["customer_id"] == ada
    assert view["customer_name"] == "Ada Lovelace"
    assert view["customer_email"] == "ada@example.com"
    assert view["status"] == "pending"
    assert view["total_amount"] == "56.48"
    assert view["item_count"] == 2
    assert view["shipping_address"] == ADDRESS
    assert [
        (i["product_name"], i["quantity"], i["unit_price"], i["subtotal"]) for i in view["items"]
    ] == [
        ("Blue Widget", 2, "19.99", "39.98"),
        ("Red Gadget", 3, "5.50", "16.50"),
    ]

    second = await order(api, ada, (gadget, 1, "5.50"))
    third = await order(api, ada, (widget, 1, "19.99"))
    await order(api, bob, (gadget, 4, "5.50"))
    cancelled = accepted(
        await api.client.delete(f"{API}/orders/{second}", params={"reason": "changed my mind"}),
        "cancelled",
    )
    assert cancelled["order_id"] == second
    accepted(await api.client.post(f"{API}/orders/{third}/ship"), "shipped")
    await api.settle()

    everything = (await api.client.get(f"{API}/customers/{ada}/orders")).json()
    assert everything["total"] == 3
    assert [o["id"] for o in everything["items"]] == [third, second, first]
    pending = (await api.client.get(f"{API}/customers/{ada}/orders?status=pending")).json()
    assert [o["id"] for o in pending["items"]] == [first]
    page_1 = (await api.client.get(f"{API}/customers/{ada}/orders?page=1&page_size=2")).json()
    page_2 = (await api.client.get(f"{API}/customers/{ada}/orders?page=2&page_size=2")).json()
    assert (page_1["total"], page_1["page"], page_1["page_size"]) == (3, 1, 2)
    assert [o["id"] for o in page_1["items"] + page_2["items"]] == [third, second, first]

    by_gadget = (await api.client.get(f"{API}/orders/search", params={"q": "gadget"})).json()
    assert by_gadget["total"] == 3
    shipped_widgets = (
        await api.client.get(f"{API}/orders/search", params={"q": "widget", "status": "shipped"})
    ).json()
    assert [o["id"] for o in shipped_widgets["items"]] == [third]
    by_name = (await api.client.get(f"{API}/orders/search", params={"q": "Bob"})).json()
    assert [o["customer_name"] for o in by_name["items"]] == ["Bob Builder"]

    stats = (await api.client.get(f"{API}/orders/statistics", params={"customer_id": ada})).json()
    assert stats["total_orders"] == 3
    assert stats["orders_by_status"] == {"pending": 1, "shipped": 1, "cancelled": 1}
    assert stats["total_revenue"] == "76.47"

    summary = (await api.client.get(f"{API}/customers/{ada}/summary")).json()
    assert summary["name"] == "Ada Lovelace"
    assert summary["total_orders"] == 3
    assert summary["orders_by_status"] == {"pending": 1, "shipped": 1, "cancelled": 1}


async def test_commands_answer_with_the_token_of_their_last_event(api: Served) -> None:
    await customer(api, "Ada", "ada@example.com")
    widget = await product(api, "Widget", "1.00", 5)
    response = await api.client.post(f"{API}/products/{widget}/restock", json={"quantity": 7})
    body = accepted(response, "restocked")
    assert body["product_id"] == widget
    token = LogPosition.parse(body["consistency_token"])
    assert await api.visible_head(token) == token
    health = (await api.client.get("/health/projections")).json()
    assert health["head"] == body["consistency_token"]


async def test_update_shipping_address_is_read_back(api: Served) -> None:
    ada = await customer(api, "Ada", "ada@example.com")
    widget = await product(api, "Widget", "2.50", 5)
    first = await order(api, ada, (widget, 1, "2.50"))
    new_address = {"street": "2 Quay", "city": "Rotterdam", "postal_code": "3011", "country": "NL"}
    response = await api.client.put(f"{API}/orders/{first}/shipping-address", json=new_address)
    assert accepted(response, "address_updated")["order_id"] == first
    await api.settle()
    view = (await api.client.get(f"{API}/orders/{first}")).json()
    assert view["shipping_address"] == new_address


async def test_money_is_exact(api: Served) -> None:
    ada = await customer(api, "Ada", "ada@example.com")
    dime = await product(api, "Dime", "0.10", 100)
    first = await order(api, ada, (dime, 3, "0.10"))
    view = await api.get_eventually(f"{API}/orders/{first}")
    assert view.json()["total_amount"] == "0.30"
    assert view.json()["items"][0]["subtotal"] == "0.30"


async def test_search_and_statistics_are_not_taken_for_an_order_id(api: Served) -> None:
    search = await api.client.get(f"{API}/orders/search")
    statistics = await api.client.get(f"{API}/orders/statistics")
    assert search.status_code == 200, search.text
    assert search.json() == {"items": [], "total": 0, "page": 1, "page_size": 20}
    assert statistics.status_code == 200, statistics.text
    assert statistics.json()["total_orders"] == 0


async def test_search_sorts_and_pages(api: Served) -> None:
    ada = await customer(api, "Ada", "ada@example.com")
    widget = await product(api, "Widget", "1.00", 100)
    ids = [await order(api, ada, (widget, n, "1.00")) for n in (3, 1, 2)]
    await api.settle()
    ascending = await api.client.get(
        f"{API}/orders/search",
        params={"sort_by": "total_amount", "sort_order": "asc", "page_size": 2},
    )
    assert [o["total_amount"] for o in ascending.json()["items"]] == ["1.00", "2.00"]
    last = await api.client.get(
        f"{API}/orders/search",
        params={"sort_by": "total_amount", "sort_order": "asc", "page_size": 2, "page": 2},
    )
    assert [o["id"] for o in last.json()["items"]] == [ids[0]]
    assert last.json()["total"] == 3


async def test_statistics_filter_by_date(api: Served) -> None:
    ada = await customer(api, "Ada", "ada@example.com")
    widget = await product(api, "Widget", "1.00", 100)
    await order(api, ada, (widget, 1, "1.00"))
    await api.settle()
    future = await api.client.get(
        f"{API}/orders/statistics", params={"from_date": "2999-01-01T00:00:00Z"}
    )
    past = await api.client.get(
        f"{API}/orders/statistics",
        params={"from_date": "2000-01-01T00:00:00Z", "to_date": "2999-01-01"},
    )
    assert future.json()["total_orders"] == 0
    assert past.json()["total_orders"] == 1


async def test_unknown_customer_has_no_orders(api: Served) -> None:
    response = await api.client.get(f"{API}/customers/{UUID(int=7)}/orders")
    assert response.status_code == 200
    assert response.json()["items"] == []
