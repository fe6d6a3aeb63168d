"""Operations endpoints through a real server: health, projection lag, metrics, OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import Statement
from orders.customer import CustomerRegistered
from orders.service import service as orders_service
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve

API = "/api/v1"


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url) as served:
        yield served


def samples(text: str, name: str) -> list[Sample]:
    return [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def value(text: str, name: str, **labels: str) -> float:
    found = [
        s.value for s in samples(text, name) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


async def register(api: Served, name: str) -> str:
    response = await api.client.post(
        f"{API}/customers", json={"name": name, "email": f"{name.lower()}@example.com"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["consistency_token"])


async def test_liveness(api: Served) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_projection_health_lists_every_projection_and_reaches_zero_lag(api: Served) -> None:
    for name in ("Ada", "Bob", "Cy"):
        token = await register(api, name)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        response = await api.client.get("/health/projections")
        assert response.status_code == 200
        body = response.json()
        rows = body["projections"]
        if all(row["lag_events"] == 0 and row["position"] == token for row in rows):
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)
    assert body["status"] == "ok"
    assert body["head"] == token
    assert {row["name"] for row in rows} == set(api.runtime.runners)
    for row in rows:
        assert set(row) == {
            "name",
            "position",
            "head",
            "lag_events",
            "lag_seconds",
            "state",
            "failures",
            "last_error",
            "updated_at",
            "level",
            "throughput",
            "failing_position",
            "parked",
            "blocked_by",
        }
        assert row["head"] == token
        assert row["lag_seconds"] == 0
        assert row["state"] == "running"
        assert row["last_error"] is None


async def test_metrics_count_commands_requests_and_lag(api: Served) -> None:
    await register(api, "Ada")
    await register(api, "Bob")
    missing = await api.client.post(f"{API}/orders/00000000-0000-0000-0000-000000000001/ship")
    assert missing.status_code == 404
    await api.client.get(f"{API}/orders/00000000-0000-0000-0000-000000000001")
    await api.settle()
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert value(text, "cqrskit_commands_total", command="RegisterCustomer", outcome="ok") == 2
    assert value(text, "cqrskit_commands_total", command="ShipOrder", outcome="NotFound") == 1
    assert value(text, "cqrskit_command_duration_seconds_count", command="RegisterCustomer") == 2
    assert (
        value(
            text,
            "cqrskit_http_requests_total",
            method="GET",
            route="/api/v1/orders/{order_id}",
            status="404",
        )
        == 1
    )
    assert (
        value(
            text,
            "cqrskit_http_requests_total",
            method="POST",
            route="/api/v1/customers",
            status="201",
        )
        == 2
    )
    for name in api.runtime.runners:
        assert value(text, "cqrskit_projection_lag_events", projection=name) == 0
        assert value(text, "cqrskit_projection_lag_seconds", projection=name) == 0
        assert value(text, "cqrskit_projection_failures", projection=name) == 0


async def test_unmatched_paths_do_not_become_labels(api: Served) -> None:
    for n in range(5):
        await api.client.get(f"/random/{n}")
    text = (await api.client.get("/metrics")).text
    assert "/random/" not in text
    assert (
        value(text, "cqrskit_http_requests_total", method="GET", route="unmatched", status="404")
        == 5
    )


async def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path: Path) -> None:
    async with (
        serve(f"sqlite:///{tmp_path}/one.db") as one,
        serve(f"sqlite:///{tmp_path}/two.db") as two,
    ):
        await register(one, "Ada")
        await register(one, "Bob")
        await register(two, "Cy")
        first = (await one.client.get("/metrics")).text
        second = (await two.client.get("/metrics")).text
    assert value(first, "cqrskit_commands_total", command="RegisterCustomer", outcome="ok") == 2
    assert value(second, "cqrskit_commands_total", command="RegisterCustomer", outcome="ok") == 1


async def test_openapi_lists_every_path_and_docs_serve(api: Served) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "orders"
    paths = schema["paths"]
    expected = {
        "/api/v1/customers": {"post"},
        "/api/v1/products": {"post"},
        "/api/v1/products/{product_id}/restock": {"post"},
        "/api/v1/orders": {"post"},
        "/api/v1/orders/{order_id}": {"get", "delete"},
        "/api/v1/orders/{order_id}/items": {"post"},
        "/api/v1/orders/{order_id}/shipping-address": {"put"},
        "/api/v1/orders/{order_id}/ship": {"post"},
        "/api/v1/orders/search": {"get"},
        "/api/v1/orders/statistics": {"get"},
        "/api/v1/customers/{customer_id}/orders": {"get"},
        "/api/v1/customers/{customer_id}/summary": {"get"},
        "/health": {"get"},
        "/health/projections": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    order_view = schema["components"]["schemas"]["OrderView"]["properties"]
    assert {"id", "customer_name", "customer_email", "items", "total_amount"} <= set(order_view)
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "/openapi.json" in docs.text


class Poison(Projection):
    """A projection whose handler fails on every customer registration."""

    name = "poison"

    @on(CustomerRegistered)
    def _registered(self, event: CustomerRegistered) -> Iterator[Statement]:
        raise ValueError("cannot project this customer")


def _with_poison() -> list[Projection]:
    return [*orders_service.projections(), Poison()]


async def test_a_failing_projection_shows_in_health_and_metrics(database_url: str) -> None:
    service = dataclasses.replace(orders_service, projections=_with_poison)
    async with serve(database_url, service=service) as api:
        await register(api, "Ada")
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            response = await api.client.get("/health/projections")
            if response.status_code == 503:
                break
            assert time.monotonic() < deadline, response.text
            await asyncio.sleep(0.02)
        body = response.json()
        assert body["status"] == "failing"
        poison = next(row for row in body["projections"] if row["name"] == "poison")
        assert poison["state"] == "failed"
        assert poison["lag_events"] == 1
        assert "cannot project this customer" in poison["last_error"]
        healthy = [row for row in body["projections"] if row["name"] != "poison"]
        assert all(row["state"] != "failed" for row in healthy)
        text = (await api.client.get("/metrics")).text
        assert value(text, "cqrskit_projection_failures", projection="poison") >= 1
        assert value(text, "cqrskit_projection_lag_events", projection="poison") == 1
        assert (await api.client.get("/health")).status_code == 200
