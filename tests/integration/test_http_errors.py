"""Every error the orders API answers: the right status, problem+json, and nothing stored."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import APIRouter

from cqrskit.errors import ConcurrencyError, IntegrityError, OperationalError
from cqrskit.http import RuntimeDep
from cqrskit.messages import LogPosition, Query
from orders.service import service as orders_service
from tests.integration.http_server import Served, serve

API = "/api/v1"
ADDRESS = {"street": "1 Main Street", "city": "Utrecht", "postal_code": "3511", "country": "NL"}
UNKNOWN = str(UUID(int=42))


@dataclass
class World:
    """A running API with one customer, one product (stock 5) and one pending order."""

    api: Served
    customer_id: str
    product_id: str
    order_id: str

    def item(self, quantity: int = 1, product_id: str | None = None) -> dict[str, Any]:
        return {
            "product_id": product_id or self.product_id,
            "quantity": quantity,
            "unit_price": "10.00",
        }

    def order_body(self, **changes: Any) -> dict[str, Any]:
        body = {
            "customer_id": self.customer_id,
            "items": [self.item()],
            "shipping_address": ADDRESS,
        }
        body.update(changes)
        return body


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async with serve(database_url) as api:
        c = api.client
        customer = await c.post(
            f"{API}/customers", json={"name": "Ada", "email": "ada@example.com"}
        )
        product = await c.post(
            f"{API}/products", json={"name": "Widget", "unit_price": "10.00", "stock": 6}
        )
        w = World(api, customer.json()["customer_id"], product.json()["product_id"], "")
        placed = await c.post(f"{API}/orders", json=w.order_body())
        assert placed.status_code == 201, placed.text
        w.order_id = placed.json()["order_id"]
        yield w


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    return body


async def stored_since(api: Served, before: LogPosition) -> int:
    """Events stored after ``before``, not counting one marker command sent now.

    The marker's token is the newest event; once readers see it, every earlier commit is
    readable too, so the count is exact on every backend.
    """
    marker = await api.client.post(
        f"{API}/customers", json={"name": "Marker", "email": "marker@example.com"}
    )
    token = LogPosition.parse(marker.json()["consistency_token"])
    await api.visible_head(token)
    return await api.runtime.backend.store.count_after(before) - 1


async def test_insufficient_stock_is_400_and_reserves_nothing(world: World) -> None:
    before = await world.api.visible_head()
    response = await world.api.client.post(
        f"{API}/orders", json=world.order_body(items=[world.item(6)])
    )
    body = assert_problem(response, 400)
    assert body["type"].endswith("rule-violation")
    assert "insufficient stock" in body["detail"]
    assert await stored_since(world.api, before) == 0

    restocked = await world.api.client.post(
        f"{API}/products/{world.product_id}/restock", json={"quantity": 7}
    )
    assert restocked.status_code == 200
    response = await world.api.client.post(
        f"{API}/orders", json=world.order_body(items=[world.item(12)])
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/orders", "unknown customer"),
        ("POST", "/orders", "unknown product"),
        ("POST", "/orders/{unknown}/items", "item"),
        ("PUT", "/orders/{unknown}/shipping-address", "address"),
        ("POST", "/orders/{unknown}/ship", None),
        ("DELETE", "/orders/{unknown}", None),
        ("POST", "/products/{unknown}/restock", "restock"),
    ],
)
async def test_commands_on_unknown_ids_are_404(
    world: World, method: str, path: str, body: str | None
) -> None:
    payloads: dict[str | None, Any] = {
        None: None,
        "unknown customer": world.order_body(customer_id=UNKNOWN),
        "unknown product": world.order_body(items=[world.item(1, UNKNOWN)]),
        "item": world.item(),
        "address": ADDRESS,
        "restock": {"quantity": 1},
    }
    before = await world.api.visible_head()
    response = await world.api.client.request(
        method, API + path.format(unknown=UNKNOWN), json=payloads[body]
    )
    problem = assert_problem(response, 404)
    assert problem["detail"].endswith("not found")
    assert await stored_since(world.api, before) == 0


@pytest.mark.parametrize(
    "path", ["/orders/{unknown}", "/customers/{unknown}/summary"], ids=["order", "summary"]
)
async def test_queries_on_unknown_ids_are_404(world: World, path: str) -> None:
    await world.api.settle()
    response = await world.api.client.get(API + path.format(unknown=UNKNOWN))
    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("ship", "add item"),
        ("ship", "cancel"),
        ("ship", "ship"),
        ("cancel", "ship"),
        ("cancel", "add item"),
        ("cancel", "update address"),
        ("cancel", "cancel"),
    ],
)
async def test_state_conflicts_are_409(world: World, first: str, then: str) -> None:
    oid = world.order_id
    actions: dict[str, tuple[str, str, Any]] = {
        "ship": ("POST", f"{API}/orders/{oid}/ship", None),
        "cancel": ("DELETE", f"{API}/orders/{oid}", None),
        "add item": ("POST", f"{API}/orders/{oid}/items", world.item()),
        "update address": ("PUT", f"{API}/orders/{oid}/shipping-address", ADDRESS),
    }
    method, url, body = actions[first]
    assert (await world.api.client.request(method, url, json=body)).status_code == 200
    before = await world.api.visible_head()
    method, url, body = actions[then]
    problem = assert_problem(await world.api.client.request(method, url, json=body), 409)
    assert problem["type"].endswith("invalid-state")
    assert await stored_since(world.api, before) == 0


# (method, path, json body or raw bytes, query params, a location the errors must name)
INVALID: dict[str, tuple[str, str, Any, dict[str, Any] | None, list[Any]]] = {
    "malformed JSON": ("POST", "/orders", b'{"customer_id": ', None, ["body", 16]),
    "body not an object": ("POST", "/customers", [1, 2], None, ["body"]),
    "missing fields": ("POST", "/customers", {"name": "Ada"}, None, ["body", "email"]),
    "empty name": ("POST", "/customers", {"name": "  ", "email": "a@b.co"}, None, ["body", "name"]),
    "bad email": ("POST", "/customers", {"name": "A", "email": "nope"}, None, ["body", "email"]),
    "unknown field": (
        "POST", "/customers", {"name": "A", "email": "a@b.co", "admin": True}, None,
        ["body", "admin"],
    ),
    "wrong type": (
        "POST", "/products", {"name": "W", "unit_price": "1.00", "stock": "many"}, None,
        ["body", "stock"],
    ),
    "negative stock": (
        "POST", "/products", {"name": "W", "unit_price": "1.00", "stock": -1}, None,
        ["body", "stock"],
    ),
    "three decimals": (
        "POST", "/products", {"name": "W", "unit_price": "1.005", "stock": 1}, None,
        ["body", "unit_price"],
    ),
    "zero price": (
        "POST", "/products", {"name": "W", "unit_price": "0", "stock": 1}, None,
        ["body", "unit_price"],
    ),
    "float price": (
        "POST", "/products", {"name": "W", "unit_price": 0.1 + 0.2, "stock": 1}, None,
        ["body", "unit_price"],
    ),
    "negative restock": ("POST", "/products/{product}/restock", {"quantity": -3}, None,
                         ["body", "quantity"]),
    "negative quantity": ("POST", "/orders/{order}/items", "item:-1", None, ["body", "quantity"]),
    "zero quantity": ("POST", "/orders", "order:0", None, ["body", "items", 0, "quantity"]),
    "no items": ("POST", "/orders", "order:none", None, ["body", "items"]),
    "too many items": ("POST", "/orders", "order:101", None, ["body", "items"]),
    "address missing city": (
        "PUT", "/orders/{order}/shipping-address", {**ADDRESS, "city": None}, None,
        ["body", "city"],
    ),
    "malformed uuid in path": ("GET", "/orders/not-a-uuid", None, None, ["path", "order_id"]),
    "malformed uuid in body": ("POST", "/orders", "order:baduuid", None, ["body", "customer_id"]),
    "unknown sort field": ("GET", "/orders/search", None, {"sort_by": "password"},
                           ["query", "sort_by"]),
    "bad sort order": ("GET", "/orders/search", None, {"sort_order": "sideways"},
                       ["query", "sort_order"]),
    "bad status": ("GET", "/orders/search", None, {"status": "lost"}, ["query", "status"]),
    "bad status in list": ("GET", "/customers/{customer}/orders", None, {"status": "lost"},
                           ["query", "status"]),
    "page zero": ("GET", "/orders/search", None, {"page": 0}, ["query", "page"]),
    "negative page": ("GET", "/customers/{customer}/orders", None, {"page": -1},
                      ["query", "page"]),
    "page not a number": ("GET", "/orders/search", None, {"page": "two"}, ["query", "page"]),
    "page size too big": ("GET", "/orders/search", None, {"page_size": 101},
                          ["query", "page_size"]),
    "bad date": ("GET", "/orders/statistics", None, {"from_date": "yesterday"},
                 ["query", "from_date"]),
    "bad customer filter": ("GET", "/orders/statistics", None, {"customer_id": "1"},
                            ["query", "customer_id"]),
    "reason too long": ("DELETE", "/orders/{order}", None, {"reason": "x" * 501},
                        ["query", "reason"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(INVALID))
async def test_invalid_requests_are_422_naming_the_field(world: World, case: str) -> None:
    method, path, body, params, loc = INVALID[case]
    if isinstance(body, str):
        kind, _, arg = body.partition(":")
        if kind == "item":
            body = world.item(int(arg))
        elif arg == "none":
            body = world.order_body(items=[])
        elif arg == "baduuid":
            body = world.order_body(customer_id="12345")
        elif arg == "101":
            body = world.order_body(items=[world.item()] * 101)
        else:
            body = world.order_body(items=[world.item(int(arg))])
    url = API + path.format(
        order=world.order_id, product=world.product_id, customer=world.customer_id
    )
    before = await world.api.visible_head()
    if isinstance(body, bytes):
        response = await world.api.client.request(
            method, url, content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await world.api.client.request(method, url, json=body, params=params)
    problem = assert_problem(response, 422)
    assert problem["type"].endswith("validation-error")
    assert problem["error_count"] >= 1
    for error in problem["errors"]:
        assert set(error) == {"loc", "msg", "type"}
    assert loc in [error["loc"] for error in problem["errors"]], problem
    assert await stored_since(world.api, before) == 0


async def test_validation_errors_are_capped(world: World) -> None:
    body = world.order_body(items=[{"quantity": "x"}] * 100)
    problem = assert_problem(await world.api.client.post(f"{API}/orders", json=body), 422)
    assert problem["error_count"] > len(problem["errors"])
    assert len(problem["errors"]) == 20


async def test_body_without_json_content_type_is_422(world: World) -> None:
    response = await world.api.client.post(
        f"{API}/customers", content=b'{"name": "A", "email": "a@b.co"}'
    )
    assert_problem(response, 422)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/api/v1/orders/search/more", 404),
        ("PATCH", "/api/v1/orders", 405),
        ("PUT", "/health", 405),
    ],
)
async def test_unknown_routes_and_methods_are_problems(
    world: World, method: str, path: str, status: int
) -> None:
    response = await world.api.client.request(method, path)
    assert_problem(response, status)
    if status == 405:
        assert response.headers["allow"]


# Framework failures, through a router that raises them on purpose.

SECRET_TEXT = 'SELECT password FROM users -- File "/srv/app/secret.py", line 3'


class _Unregistered(Query):
    pass


def _failing_router() -> APIRouter:
    router = APIRouter(prefix="/fail")

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError(SECRET_TEXT)

    @router.get("/integrity")
    async def integrity() -> None:
        raise IntegrityError(SECRET_TEXT)

    @router.get("/unavailable")
    async def unavailable() -> None:
        raise OperationalError(SECRET_TEXT)

    @router.get("/conflict")
    async def conflict() -> None:
        raise ConcurrencyError("order-" + SECRET_TEXT, 3, current_version=4)

    @router.get("/no-handler")
    async def no_handler(runtime: RuntimeDep) -> None:
        await runtime.query_bus.dispatch(_Unregistered(), object)

    return router


@pytest.fixture
async def failing(sqlite_url: str) -> AsyncIterator[Served]:
    service = dataclasses.replace(
        orders_service, routers=lambda: [*orders_service.routers(), _failing_router()]
    )
    async with serve(sqlite_url, service=service) as api:
        yield api


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/fail/crash", 500),
        ("/fail/integrity", 500),
        ("/fail/no-handler", 500),
        ("/fail/unavailable", 503),
        ("/fail/conflict", 409),
    ],
)
async def test_framework_failures_map_to_generic_problems(
    failing: Served, path: str, status: int
) -> None:
    response = await failing.client.get(path)
    body = assert_problem(response, status)
    for leak in ("SELECT", "password", "secret", ".py", "Traceback", "File", "order-"):
        assert leak not in response.text, (leak, response.text)
    if status == 503:
        assert int(response.headers["retry-after"]) > 0
    if status == 409:
        assert body["current_version"] == 4
        assert body["type"].endswith("concurrency-conflict")


async def test_database_unavailable_is_503_with_retry_after(database_url: str) -> None:
    async with serve(database_url, run_projections=False) as api:
        await api.runtime.backend.close()
        response = await api.client.post(
            f"{API}/customers", json={"name": "Ada", "email": "ada@example.com"}
        )
        assert_problem(response, 503)
        assert int(response.headers["retry-after"]) > 0
        assert "sqlite" not in response.text.lower()
        assert "asyncpg" not in response.text.lower()
        assert (await api.client.get("/health")).status_code == 200
