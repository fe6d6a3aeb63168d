"""Read-your-writes through the real HTTP server, on SQLite and PostgreSQL.

A client that sends its command's consistency token back with a query sees its own write,
whether the projections run in the server (woken by the runner after each commit) or in
another runtime (the server polls the checkpoint table). A projection that cannot make
progress makes the wait run out: the answer is the old data, marked stale.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import pytest

from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.read_models.protocol import (
    CheckpointRow,
    DeadLetter,
    ReadModelStore,
    Sql,
    Statement,
)
from cqrskit.service import Runtime
from orders.service import service as orders_service
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve

API = "/api/v1"
ADDRESS = {"street": "1 Canal Street", "city": "Amsterdam", "postal_code": "1011", "country": "NL"}
CLIENTS = 40


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Served]:
    async with serve(database_url, consistency_timeout=10.0) as served:
        yield served


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            if dict(re.findall(r'(\w+)="([^"]*)"', head)) == labels:
                return float(value)
    return 0.0


async def setup_catalog(client: httpx.AsyncClient, clients: int) -> tuple[list[str], list[str]]:
    """One customer and one product per client (orders of one product contend for its stock)."""
    customers, products = [], []
    for n in range(clients):
        response = await client.post(
            f"{API}/customers", json={"name": f"Client {n}", "email": f"c{n}@example.com"}
        )
        assert response.status_code == 201, response.text
        customers.append(response.json()["customer_id"])
        response = await client.post(
            f"{API}/products", json={"name": f"Widget {n}", "unit_price": "2.50", "stock": 1000}
        )
        assert response.status_code == 201, response.text
        products.append(response.json()["product_id"])
    return customers, products


async def place_order(client: httpx.AsyncClient, customer_id: str, product_id: str) -> Any:
    body = {
        "customer_id": customer_id,
        "items": [{"product_id": product_id, "quantity": 1, "unit_price": "2.50"}],
        "shipping_address": ADDRESS,
    }
    response = await client.post(f"{API}/orders", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def create_then_read(
    client: httpx.AsyncClient, customer_id: str, product_id: str, n: int
) -> None:
    created = await place_order(client, customer_id, product_id)
    order_id, token = created["order_id"], created["consistency_token"]
    # Half send the header, half the query parameter.
    if n % 2:
        response = await client.get(
            f"{API}/orders/{order_id}", headers={"X-Consistency-Token": token}
        )
    else:
        response = await client.get(f"{API}/orders/{order_id}", params={"consistent_with": token})
    assert response.status_code == 200, response.text
    assert response.headers["x-consistency"] == "consistent"
    view = response.json()
    assert view["id"] == order_id
    assert view["customer_name"] == f"Client {n}"
    assert "stale" not in view
    listing = await client.get(
        f"{API}/customers/{customer_id}/orders", headers={"X-Consistency-Token": token}
    )
    assert listing.status_code == 200, listing.text
    assert listing.headers["x-consistency"] == "consistent"
    assert order_id in [item["id"] for item in listing.json()["items"]]


async def test_many_clients_each_read_their_own_new_order(api: Served) -> None:
    customers, products = await setup_catalog(api.client, CLIENTS)
    await asyncio.gather(
        *(create_then_read(api.client, customers[n], products[n], n) for n in range(CLIENTS))
    )
    metrics = (await api.client.get("/metrics")).text
    reads = "cqrskit_consistent_reads_total"
    assert sample(metrics, reads, query="GetOrderById", outcome="consistent") == CLIENTS
    assert sample(metrics, reads, query="GetOrderById", outcome="stale") == 0


async def test_reads_wait_for_projections_running_in_another_runtime(database_url: str) -> None:
    async with serve(database_url, run_projections=False, consistency_timeout=10.0) as api:
        worker = await Runtime.open(
            orders_service,
            Settings(database_url=database_url, migrate=False, projection_poll_interval=0.25),
        )
        try:
            worker.start_projections()
            customers, products = await setup_catalog(api.client, 12)
            await asyncio.gather(
                *(create_then_read(api.client, customers[n], products[n], n) for n in range(12))
            )
        finally:
            await worker.close()


async def committed(api: Served, projection: str, token: str) -> None:
    """Wait (up to the test deadline, not a query's limit) until ``projection`` has ``token``."""
    position = LogPosition.parse(token)
    assert await api.runtime.checkpoints.wait((projection,), position, DEADLINE_SECONDS)


class StalledReadModels:
    """A read-model store whose commits wait until ``gate`` is set (everything else passes)."""

    def __init__(self, inner: ReadModelStore, gate: asyncio.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.dialect = inner.dialect

    async def migrate(self, ddl: Sequence[Sql]) -> None:
        await self.inner.migrate(ddl)

    async def fetch(self, query: Sql, *params: Any) -> list[Mapping[str, Any]]:
        return await self.inner.fetch(query, *params)

    async def fetchone(self, query: Sql, *params: Any) -> Mapping[str, Any] | None:
        return await self.inner.fetchone(query, *params)

    async def checkpoint(self, name: str) -> LogPosition:
        return await self.inner.checkpoint(name)

    async def checkpoints(self) -> list[CheckpointRow]:
        return await self.inner.checkpoints()

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
        durable: bool = True,
    ) -> None:
        await self.gate.wait()
        await self.inner.commit(
            name, statements, expected=expected, position=position, durable=durable
        )

    async def reset(self, name: str, statements: Sequence[Statement]) -> None:
        await self.inner.reset(name, statements)

    async def dead_letters(
        self, projection: str | None = None, *, stream_id: str | None = None
    ) -> list[DeadLetter]:
        return await self.inner.dead_letters(projection, stream_id=stream_id)

    async def parked_streams(self, projection: str) -> frozenset[str]:
        return await self.inner.parked_streams(projection)

    async def settle_dead_letters(
        self,
        projection: str,
        stream_id: str,
        *,
        expected: Sequence[int],
        statements: Sequence[Statement],
        remove: Sequence[int] = (),
        skip: Sequence[int] = (),
        failed: tuple[int, str] | None = None,
    ) -> None:
        await self.inner.settle_dead_letters(
            projection,
            stream_id,
            expected=expected,
            statements=statements,
            remove=remove,
            skip=skip,
            failed=failed,
        )


async def test_stalled_projection_answers_old_data_marked_stale(database_url: str) -> None:
    async with serve(database_url, consistency_timeout=0.5) as api:
        customers, products = await setup_catalog(api.client, 1)
        product = products[0]
        created = await place_order(api.client, customers[0], product)
        order_id = created["order_id"]
        # The server's 0.5 s limit is for the stalled reads below; this one must not be stale.
        await committed(api, "order_detail", created["consistency_token"])
        first = await api.client.get(
            f"{API}/orders/{order_id}",
            headers={"X-Consistency-Token": created["consistency_token"]},
        )
        assert first.headers["x-consistency"] == "consistent"
        assert first.json()["item_count"] == 1

        runner = api.runtime.runners["order_detail"]
        gate = asyncio.Event()
        runner.read_models = StalledReadModels(runner.read_models, gate)
        added = await api.client.post(
            f"{API}/orders/{order_id}/items",
            json={"product_id": product, "quantity": 2, "unit_price": "2.50"},
        )
        assert added.status_code == 200, added.text
        token = added.json()["consistency_token"]

        # Asking for more than the server's 0.5 s limit still gets at most the limit.
        stale = await api.client.get(
            f"{API}/orders/{order_id}",
            params={"consistent_with": token, "consistency_timeout": "3600"},
        )
        assert stale.status_code == 200, stale.text
        assert stale.headers["x-consistency"] == "stale"
        body = stale.json()
        assert body["stale"] is True
        assert body["item_count"] == 1
        assert body["id"] == order_id

        # Other projections are not stalled: a query reading one of them is consistent.
        await committed(api, "customer_orders", token)
        listing = await api.client.get(
            f"{API}/customers/{customers[0]}/orders", headers={"X-Consistency-Token": token}
        )
        assert listing.headers["x-consistency"] == "consistent"
        assert "stale" not in listing.json()

        # An order the stalled projection has not seen: 404, and the answer says why.
        unseen = await place_order(api.client, customers[0], product)
        missing = await api.client.get(
            f"{API}/orders/{unseen['order_id']}",
            headers={"X-Consistency-Token": unseen["consistency_token"]},
        )
        assert missing.status_code == 404, missing.text
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["x-consistency"] == "stale"

        plain = await api.client.get(f"{API}/orders/{order_id}")
        assert "x-consistency" not in plain.headers
        assert "stale" not in plain.json()

        gate.set()
        fresh = await api.client.get(
            f"{API}/orders/{order_id}",
            headers={"X-Consistency-Token": token, "X-Consistency-Timeout": "10"},
        )
        assert fresh.headers["x-consistency"] == "consistent"
        assert fresh.json()["item_count"] == 2
        assert "stale" not in fresh.json()
        metrics = (await api.client.get("/metrics")).text
        reads = "cqrskit_consistent_reads_total"
        assert sample(metrics, reads, query="GetOrderById", outcome="stale") == 2


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({"X-Consistency-Token": "abc"}, {}),
        ({"X-Consistency-Token": "1.2.3"}, {}),
        ({"X-Consistency-Token": "-1.5"}, {}),
        ({"X-Consistency-Token": "1" * 30 + "." + "2" * 30}, {}),
        ({}, {"consistent_with": "0x1.2"}),
        ({}, {"consistent_with": "\u0661.\u0662"}),
        ({}, {"consistent_with": ""}),
        ({"X-Consistency-Token": "0.1", "X-Consistency-Timeout": "-1"}, {}),
        ({}, {"consistent_with": "0.1", "consistency_timeout": "nan"}),
    ],
)
async def test_malformed_token_or_timeout_is_a_422_problem(
    sqlite_url: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    async with serve(sqlite_url) as api:
        order_id = "8f0f5a47-3a4e-4a51-9a48-52d0a3e6e0c4"
        response = await api.client.get(f"{API}/orders/{order_id}", headers=headers, params=params)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == "urn:cqrskit:problem:validation-error"
        text = response.text
        for value in [*headers.values(), *params.values()]:
            if len(value) >= 3:
                assert value not in text
