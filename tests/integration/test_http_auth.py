"""API keys against the real server: anonymous, wrong key, valid key; the acting user id.

The user id in event metadata comes only from the verified key; a body that names a user is
refused and stores nothing. Correlation ids from ``X-Correlation-ID`` reach every event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import APIRouter
from typer.testing import CliRunner

from cqrskit.cli import app as cli_app
from cqrskit.config import Settings
from cqrskit.http.auth import ApiKeys, Principal
from cqrskit.service import Service
from orders.service import service as orders_service
from tests.integration.http_server import Served, serve

API = "/api/v1"
ALICE = "alice-key-7f3a91c2d4"
ROOT = "root-key-0b8e5521aa"
KEYS = json.dumps(
    {ALICE: {"user_id": "alice", "roles": ["clerk"]}, ROOT: {"user_id": "root", "roles": ["admin"]}}
)
ADDRESS = {"street": "1 Main Street", "city": "Utrecht", "postal_code": "3511", "country": "NL"}


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[Served]:
    async with serve(sqlite_url, api_keys=KEYS) as served:
        yield served


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert ALICE not in response.text
    assert ROOT not in response.text


async def _events(api: Served, stream_id: str) -> list[object]:
    return list(await api.runtime.backend.store.read_stream(stream_id))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-key"),
        bearer(ALICE + "x"),
        bearer(ALICE[:-1]),
        {"Authorization": f"Basic {ALICE}"},
        {"Authorization": "Bearer"},
        {"X-API-Key": "nope"},
    ],
    ids=["anonymous", "wrong", "longer", "prefix", "basic", "empty-bearer", "wrong-x-api-key"],
)
async def test_commands_without_a_valid_key_are_401_and_store_nothing(
    api: Served, headers: dict[str, str]
) -> None:
    head = await api.head()
    response = await api.client.post(
        f"{API}/customers", json={"name": "Eve", "email": "e@ex.com"}, headers=headers
    )
    assert_unauthorized(response)
    assert await api.head() == head


async def test_every_command_route_needs_a_key(api: Served) -> None:
    some = uuid4()
    calls = [
        ("POST", f"{API}/products", {"name": "W", "unit_price": "1.00", "stock": 1}),
        ("POST", f"{API}/products/{some}/restock", {"quantity": 1}),
        ("POST", f"{API}/orders", {}),
        ("POST", f"{API}/orders/{some}/items", {}),
        ("PUT", f"{API}/orders/{some}/shipping-address", ADDRESS),
        ("POST", f"{API}/orders/{some}/ship", None),
        ("DELETE", f"{API}/orders/{some}", None),
    ]
    for method, path, body in calls:
        response = await api.client.request(method, path, json=body)
        assert_unauthorized(response)


async def test_valid_key_acts_as_its_user_with_causation_and_correlation(api: Served) -> None:
    correlation = str(uuid4())
    response = await api.client.post(
        f"{API}/customers",
        json={"name": "Ada", "email": "ada@ex.com"},
        headers={**bearer(ALICE), "X-Correlation-ID": correlation},
    )
    assert response.status_code == 201, response.text
    customer_id = response.json()["customer_id"]
    product = await api.client.post(
        f"{API}/products",
        json={"name": "Widget", "unit_price": "2.00", "stock": 5},
        headers={"X-API-Key": ROOT},
    )
    assert product.status_code == 201, product.text
    order = await api.client.post(
        f"{API}/orders",
        json={
            "customer_id": customer_id,
            "items": [
                {"product_id": product.json()["product_id"], "quantity": 2, "unit_price": "2.00"}
            ],
            "shipping_address": ADDRESS,
        },
        headers={**bearer(ALICE), "X-Correlation-ID": correlation},
    )
    assert order.status_code == 201, order.text
    (registered,) = await _events(api, f"customer-{customer_id}")
    meta = registered.metadata  # type: ignore[attr-defined]
    assert (meta.user_id, meta.correlation_id) == ("alice", UUID(correlation))
    assert meta.causation_id is not None
    placed = await _events(api, f"order-{order.json()['order_id']}")
    stock = await _events(api, f"product-{product.json()['product_id']}")
    assert [e.metadata.user_id for e in stock] == ["root", "alice"]  # type: ignore[attr-defined]
    created, reserved = placed[0], stock[1]
    # One command, two streams: same causation (the command id), same correlation.
    assert created.metadata == reserved.metadata  # type: ignore[attr-defined]
    assert created.metadata.causation_id != meta.causation_id  # type: ignore[attr-defined]
    assert created.metadata.correlation_id == UUID(correlation)  # type: ignore[attr-defined]
    # Without the header the correlation id is the command id.
    assert stock[0].metadata.correlation_id == stock[0].metadata.causation_id  # type: ignore[attr-defined]


async def test_body_cannot_set_the_user_id(api: Served) -> None:
    head = await api.head()
    for field in ("user_id", "userId", "metadata"):
        response = await api.client.post(
            f"{API}/customers",
            json={"name": "Ada", "email": "ada@ex.com", field: "mallory"},
            headers=bearer(ALICE),
        )
        assert response.status_code == 422, response.text
        assert "mallory" not in response.text
    assert await api.head() == head


async def test_reads_are_open_but_a_wrong_key_is_not(api: Served) -> None:
    path = f"{API}/orders/statistics"
    assert (await api.client.get(path)).status_code == 200
    assert (await api.client.get(path, headers=bearer(ALICE))).status_code == 200
    assert_unauthorized(await api.client.get(path, headers=bearer("guess")))
    assert (await api.client.get("/health")).status_code == 200


@pytest.mark.parametrize("value", ["not-a-uuid", "' OR 1=1 --", "0" * 100])
async def test_malformed_correlation_id_is_422(api: Served, value: str) -> None:
    response = await api.client.post(
        f"{API}/customers",
        json={"name": "Ada", "email": "ada@ex.com"},
        headers={**bearer(ALICE), "X-Correlation-ID": value},
    )
    assert response.status_code == 422
    assert value not in response.text


def _with_admin_route() -> Service:
    admin = APIRouter(prefix="/admin")

    @admin.post("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return dataclasses.replace(orders_service, routers=lambda: [*orders_service.routers(), admin])


async def test_admin_routes_need_the_admin_role(sqlite_url: str) -> None:
    async with serve(sqlite_url, api_keys=KEYS, service=_with_admin_route()) as api:
        path = "/admin/ping"
        assert_unauthorized(await api.client.post(path))
        assert_unauthorized(await api.client.post(path, headers=bearer("guess")))
        forbidden = await api.client.post(path, headers=bearer(ALICE))
        assert forbidden.status_code == 403
        assert forbidden.headers["content-type"] == "application/problem+json"
        allowed = await api.client.post(path, headers=bearer(ROOT))
        assert allowed.status_code == 200
        assert allowed.json() == {"pong": "yes"}


async def test_operator_endpoints_need_the_admin_role(api: Served) -> None:
    path = "/admin/deadletters"
    assert_unauthorized(await api.client.get(path))
    assert (await api.client.get(path, headers=bearer(ALICE))).status_code == 403
    assert (await api.client.get(path, headers=bearer(ROOT))).status_code == 200
    retry = "/admin/deadletters/order_detail/order-1/retry"
    assert_unauthorized(await api.client.post(retry))
    assert (await api.client.post(retry, headers=bearer(ALICE))).status_code == 403


async def test_keys_never_reach_the_logs(api: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await api.client.post(
        f"{API}/customers", json={"name": "A", "email": "a@ex.com"}, headers=bearer(ALICE)
    )
    await api.client.post(
        f"{API}/customers", json={"name": "A", "email": "a@ex.com"}, headers=bearer(ALICE + "!")
    )
    assert ALICE not in caplog.text
    settings = Settings(api_keys=KEYS)
    assert ALICE not in repr(settings)
    assert ALICE not in repr(ApiKeys.parse(KEYS))


async def test_without_keys_commands_are_anonymous(sqlite_url: str) -> None:
    async with serve(sqlite_url) as api:
        response = await api.client.post(
            f"{API}/customers", json={"name": "Ada", "email": "ada@ex.com"}, headers=bearer("x")
        )
        assert response.status_code == 201
        (event,) = await _events(api, f"customer-{response.json()['customer_id']}")
        assert event.metadata.user_id is None  # type: ignore[attr-defined]


def test_key_formats() -> None:
    keys = ApiKeys.parse("k1=alice:admin|clerk, k2=bob")
    assert keys.verify("k1") == Principal("alice", frozenset({"admin", "clerk"}))
    assert keys.verify("k2") == Principal("bob")
    assert keys.verify("k3") is None
    assert keys.verify("") is None
    assert not ApiKeys.parse("").enabled
    for bad in ('{"k": "alice"}', "[1]", "{oops", "no-equals", "k=", 'k={"x"}', "k=al ice"):
        with pytest.raises(ValueError):  # noqa: PT011
            ApiKeys.parse(bad)


async def test_events_show_prints_the_audit_trail(api: Served) -> None:
    correlation = uuid4()
    response = await api.client.post(
        f"{API}/customers",
        json={"name": "Ada", "email": "ada@ex.com"},
        headers={**bearer(ALICE), "X-Correlation-ID": str(correlation)},
    )
    stream = f"customer-{response.json()['customer_id']}"
    (event,) = await _events(api, stream)
    url = api.runtime.settings.database_url
    runner = CliRunner(env={"CQRSKIT_DATABASE_URL": None, "CQRSKIT_SERVICE": None})
    shown = await asyncio.to_thread(
        runner.invoke, cli_app, ["events", "show", stream, "--database-url", url]
    )
    assert shown.exit_code == 0, shown.stdout
    assert "alice" in shown.stdout
    assert str(event.metadata.causation_id)[:8] in shown.stdout  # type: ignore[attr-defined]
    assert str(correlation)[:8] in shown.stdout
    as_json = await asyncio.to_thread(
        runner.invoke, cli_app, ["events", "show", stream, "--json", "--database-url", url]
    )
    (row,) = json.loads(as_json.stdout)
    assert row["metadata"] == {
        "user_id": "alice",
        "causation_id": str(event.metadata.causation_id),  # type: ignore[attr-defined]
        "correlation_id": str(correlation),
    }
    tail = await asyncio.to_thread(
        runner.invoke, cli_app, ["events", "tail", "-n", "1", "--database-url", url]
    )
    assert "alice" in tail.stdout
