"""Hostile input against the real server: it answers 4xx, leaks nothing, and stays up.

Every error body is checked for stack traces, file paths, SQL and driver names, and for the
canary secrets planted in the submitted values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest

from tests.integration.http_server import Served, serve

API = "/api/v1"
LIMIT = 16 * 1024
CANARY = "CANARY-s3cr3t-9f27e1"
ADDRESS = {"street": "1 Main Street", "city": "Utrecht", "postal_code": "3511", "country": "NL"}
LEAKS = ("Traceback", 'File "', ".py", "sqlite", "asyncpg", "SELECT", "INSERT", "events", CANARY)


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url, max_body_bytes=LIMIT) as served:
        yield served


def assert_safe_rejection(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    """A 4xx problem document that quotes nothing it should not."""
    assert response.status_code in (statuses or range(400, 500)), response.text
    assert response.headers["content-type"] == "application/problem+json"
    for leak in LEAKS:
        assert leak not in response.text, (leak, response.text)
    assert "s3cr3t" not in response.text
    body: dict[str, Any] = response.json()
    return body


async def setup_order(api: Served) -> tuple[str, str, str]:
    c = api.client
    customer = (await c.post(f"{API}/customers", json={"name": "Ada", "email": "a@ex.com"})).json()
    product = (
        await c.post(f"{API}/products", json={"name": "Widget", "unit_price": "2.00", "stock": 9})
    ).json()
    body = {
        "customer_id": customer["customer_id"],
        "items": [{"product_id": product["product_id"], "quantity": 1, "unit_price": "2.00"}],
        "shipping_address": ADDRESS,
    }
    placed = (await c.post(f"{API}/orders", json=body)).json()
    return customer["customer_id"], product["product_id"], placed["order_id"]


async def test_declared_body_over_the_limit_is_413(api: Served) -> None:
    body = b'{"name": "' + b"a" * LIMIT + b'", "email": "a@b.co"}'
    response = await api.client.post(
        f"{API}/customers", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_safe_rejection(response, 413)
    assert problem["status"] == 413
    assert (await api.client.get("/health")).status_code == 200


async def test_streamed_body_over_the_limit_is_413(api: Served) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(8):
            yield b"a" * 4096

    response = await api.client.post(
        f"{API}/customers", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_safe_rejection(response, 413)
    assert (await api.client.get("/health")).status_code == 200


async def test_body_at_the_limit_is_accepted(api: Served) -> None:
    body = b'{"name": "Ada", "email": "ada@example.com"}'
    padded = body[:-1] + b" " * (LIMIT - len(body)) + b"}"
    assert len(padded) == LIMIT
    response = await api.client.post(
        f"{API}/customers", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_oversized_body_stores_nothing(api: Served) -> None:
    before = await api.visible_head()
    customer = {"name": "Ada", "email": "a@b.co", "pad": "x" * LIMIT}
    assert_safe_rejection(await api.client.post(f"{API}/customers", json=customer), 413)
    await api.visible_head()
    assert await api.head() == before


@pytest.mark.parametrize("depth", [50, 2000, LIMIT // 2 - 10])
async def test_deeply_nested_json_is_rejected(api: Served, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    response = await api.client.post(
        f"{API}/orders", content=body, headers={"content-type": "application/json"}
    )
    assert_safe_rejection(response, 400, 422)


@pytest.mark.parametrize(
    "payload",
    [
        {"customer_id": "x", "items": [{}] * 4000, "shipping_address": {}},
        {"customer_id": str(UUID(int=1)), "items": list(range(2000)), "shipping_address": {}},
        [0] * 7000,
    ],
    ids=["many-empty-items", "items-are-numbers", "top-level-array"],
)
async def test_huge_arrays_are_rejected(api: Served, payload: Any) -> None:
    response = await api.client.post(f"{API}/orders", json=payload)
    problem = assert_safe_rejection(response, 422)
    assert len(problem["errors"]) <= 20


@pytest.mark.parametrize(
    "customer",
    [
        {"name": f"Ada\u0000{CANARY}", "email": "a@b.co"},
        {"name": f"Ada\u0007{CANARY}", "email": "a@b.co"},
        {"name": "Ada", "email": f"a\u0000{CANARY}@b.co"},
        {"name": CANARY * 20, "email": "a@b.co"},
        {"name": "Ada", "email": f"{CANARY}-not-an-email"},
        {"name": ["Ada", CANARY], "email": "a@b.co"},
        {"name": {"first": CANARY}, "email": "a@b.co"},
        {"name": 10**40, "email": CANARY},
    ],
    ids=[
        "nul-in-name",
        "control-in-name",
        "nul-in-email",
        "overlong-name",
        "bad-email",
        "name-is-list",
        "name-is-object",
        "huge-number",
    ],
)
async def test_bad_strings_are_422_and_never_echoed(api: Served, customer: Any) -> None:
    before = await api.visible_head()
    response = await api.client.post(f"{API}/customers", json=customer)
    assert_safe_rejection(response, 422)
    assert await api.head() == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "\xff\xfe", "email": "a@b.co"}',
        b'{"name": "Ada", "email": "a@b.co", "n": 1' + b"0" * 5000 + b"}",
        b'{"name": NaN, "email": "a@b.co"}',
        b'{"name": "Ada", "email": "a@b.co"} trailing',
        b"\x00\x00\x00",
        b'{"name": "Ada\\ud800", "email": "a@b.co"}',
        b'{"name": "Ada\\u0000", "email": "a@b.co"}',
    ],
    ids=[
        "invalid-utf8",
        "giant-integer",
        "nan",
        "trailing-garbage",
        "nul-bytes",
        "lone-surrogate",
        "escaped-nul",
    ],
)
async def test_unparseable_bodies_are_rejected(api: Served, raw: bytes) -> None:
    response = await api.client.post(
        f"{API}/customers", content=raw, headers={"content-type": "application/json"}
    )
    assert_safe_rejection(response, 400, 422)


async def test_canaries_in_every_field_are_never_echoed(api: Served) -> None:
    customer_id, product_id, order_id = await setup_order(api)
    bad_item = {"product_id": CANARY, "quantity": CANARY, "unit_price": CANARY}
    requests: list[tuple[str, str, Any, dict[str, str] | None]] = [
        ("POST", "/products", {"name": "W", "unit_price": CANARY, "stock": CANARY}, None),
        ("POST", "/products", {"name": "W", "unit_price": f"1.{CANARY}", "stock": 1}, None),
        ("POST", f"/products/{product_id}/restock", {"quantity": f"1{CANARY}"}, None),
        ("POST", "/orders", {"customer_id": CANARY, "items": [bad_item]}, None),
        ("POST", f"/orders/{order_id}/items", bad_item, None),
        ("PUT", f"/orders/{order_id}/shipping-address", {**ADDRESS, "city": CANARY * 30}, None),
        (
            "PUT",
            f"/orders/{order_id}/shipping-address",
            {**ADDRESS, "postal_code": CANARY * 2},
            None,
        ),
        ("GET", f"/orders/{CANARY}", None, None),
        ("POST", f"/orders/{CANARY}/ship", None, None),
        ("DELETE", f"/orders/{order_id}", None, {"reason": CANARY + "\u0000"}),
        ("DELETE", f"/orders/{order_id}", None, {"reason": CANARY * 40}),
        ("GET", "/orders/search", None, {"sort_by": CANARY}),
        ("GET", "/orders/search", None, {"sort_order": CANARY}),
        ("GET", "/orders/search", None, {"status": CANARY}),
        ("GET", "/orders/search", None, {"page": CANARY}),
        ("GET", "/orders/search", None, {"customer_id": CANARY}),
        ("GET", "/orders/search", None, {"q": CANARY * 20}),
        ("GET", "/orders/search", None, {"q": CANARY + "\u0000"}),
        ("GET", "/orders/statistics", None, {"from_date": CANARY}),
        ("GET", "/orders/statistics", None, {"to_date": f"2024-01-01T{CANARY}"}),
        ("GET", f"/customers/{customer_id}/orders", None, {"page_size": CANARY}),
        ("GET", f"/customers/{CANARY}/summary", None, None),
    ]
    for method, path, body, params in requests:
        response = await api.client.request(method, API + path, json=body, params=params)
        assert_safe_rejection(response, 422)


@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1e400", "-1", "9" * 40],
)
async def test_extreme_dates_are_rejected_not_crashed(api: Served, moment: str) -> None:
    response = await api.client.get(f"{API}/orders/statistics", params={"from_date": moment})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert_safe_rejection(response, 422)


INJECTIONS = [
    "' OR 1=1 --",
    "'); DROP TABLE events; --",
    '"unbalanced',
    "NEAR(widget ada)",
    "widget*",
    "*",
    "a AND OR NOT",
    "widget:* & !ada | (",
    "\\",
    "%_%",
    "name:ada",
    "^ada",
    "!!!",
    "(((",
    "-widget",
    "ada' UNION SELECT * FROM events --",
    "\u01c5\u0301\u200b\ufeff\U0001d500",
]


@pytest.mark.parametrize("q", INJECTIONS)
async def test_search_injection_strings_are_plain_text(api: Served, q: str) -> None:
    customer_id, _, order_id = await setup_order(api)
    await api.settle()
    response = await api.client.get(f"{API}/orders/search", params={"q": q})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] in (0, 1)
    assert page["total"] == len(page["items"])
    still_there = await api.client.get(f"{API}/orders/{order_id}")
    assert still_there.status_code == 200
    filtered = await api.client.get(
        f"{API}/orders/search", params={"q": q, "customer_id": customer_id, "status": "pending"}
    )
    assert filtered.status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/orders/1' OR '1'='1", None),
        ("/orders/%27%3B%20DROP%20TABLE%20events", None),
        ("/customers/00000000-0000-0000-0000-000000000000' --/orders", None),
        ("/orders/search", {"sort_by": "created_at; DROP TABLE events"}),
        ("/orders/search", {"sort_by": "total_amount DESC, (SELECT 1)"}),
        ("/orders/search", {"sort_order": "asc; --"}),
        ("/orders/search", {"status": "pending' OR '1'='1"}),
        ("/orders/search", {"page_size": "10; DROP TABLE events"}),
        ("/orders/statistics", {"customer_id": "' OR 1=1 --"}),
    ],
)
async def test_injection_in_path_and_filters_is_rejected(
    api: Served, path: str, params: dict[str, str] | None
) -> None:
    response = await api.client.get(API + path, params=params)
    assert_safe_rejection(response, 404, 422)


async def test_the_server_survives_the_onslaught(api: Served) -> None:
    _, _, order_id = await setup_order(api)
    for q in INJECTIONS:
        await api.client.get(f"{API}/orders/search", params={"q": q})
    await api.client.post(
        f"{API}/orders", content=b"[" * 8000, headers={"content-type": "application/json"}
    )
    assert (await api.client.get("/health")).json() == {"status": "ok"}
    assert (await api.get_eventually(f"{API}/orders/{order_id}")).status_code == 200
    health = (await api.client.get("/health/projections")).json()
    assert health["status"] == "ok"
    assert all(p["last_error"] is None for p in health["projections"])
