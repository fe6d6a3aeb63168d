"""The Redis query cache through the real HTTP server, on SQLite and PostgreSQL.

Each module run starts its own ``redis-server`` on a free port (never the machine's shared
one), so tests can kill, restart, pause, flush and poison it. Hot reads of an order come
from Redis without touching the read-model store; every change to an order is visible
through the cache once its token is reached; and whatever happens to Redis, no request
fails and no answer is older than what the projection has committed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx
import pytest
import redis

from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.service import Runtime
from orders.service import service as orders_service
from tests.conftest import reachable
from tests.integration.http_server import DEADLINE_SECONDS, Served, serve

API = "/api/v1"
ADDRESS = {"street": "1 Canal Street", "city": "Amsterdam", "postal_code": "1011", "country": "NL"}
PREFIX = "cqrskit-test"
LOOKUPS = "cqrskit_query_cache_lookups_total"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NO_PERSISTENCE = ("--save", "", "--appendonly", "no")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A private redis-server: no persistence, its own port, killable."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", *NO_PERSISTENCE],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port, timeout=0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)


@pytest.fixture(scope="module")
def redis_process() -> Iterator[RedisProcess]:
    if not os.access(REDIS_SERVER, os.X_OK):
        message = f"redis-server is not installed at {REDIS_SERVER}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server(redis_process: RedisProcess) -> RedisProcess:
    redis_process.start()
    redis_process.client().flushall()
    return redis_process


@pytest.fixture
async def api(database_url: str, redis_server: RedisProcess) -> AsyncIterator[Served]:
    async with serve(
        database_url, redis_url=redis_server.url, redis_prefix=PREFIX, consistency_timeout=10.0
    ) as served:
        yield served


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            if dict(re.findall(r'(\w+)="([^"]*)"', head)) == labels:
                return float(value)
    return 0.0


async def lookups(api: Served, outcome: str) -> float:
    text = (await api.client.get("/metrics")).text
    return sample(text, LOOKUPS, query="GetOrderById", outcome=outcome)


class Shop:
    """A customer, products and orders, driven through the API."""

    def __init__(self, api: Served) -> None:
        self.api = api
        self.client = api.client
        self.products: list[str] = []
        self.customer = ""

    async def open(self, products: int) -> None:
        response = await self.client.post(
            f"{API}/customers", json={"name": "Ada", "email": "ada@example.com"}
        )
        assert response.status_code == 201, response.text
        self.customer = response.json()["customer_id"]
        for n in range(products):
            response = await self.client.post(
                f"{API}/products",
                json={"name": f"Part {n}", "unit_price": "1.25", "stock": 1_000_000},
            )
            assert response.status_code == 201, response.text
            self.products.append(response.json()["product_id"])

    async def order(self, product: int = 0) -> tuple[str, str]:
        body = {
            "customer_id": self.customer,
            "items": [{"product_id": self.products[product], "quantity": 1, "unit_price": "1.25"}],
            "shipping_address": ADDRESS,
        }
        response = await self.client.post(f"{API}/orders", json=body)
        assert response.status_code == 201, response.text
        return response.json()["order_id"], response.json()["consistency_token"]

    async def add_item(self, order_id: str, product: int = 0) -> str:
        response = await self.client.post(
            f"{API}/orders/{order_id}/items",
            json={"product_id": self.products[product], "quantity": 1, "unit_price": "1.25"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["consistency_token"])

    async def read(self, order_id: str, token: str | None = None) -> dict[str, Any]:
        headers = {"X-Consistency-Token": token} if token else {}
        response = await self.client.get(f"{API}/orders/{order_id}", headers=headers)
        assert response.status_code == 200, response.text
        if token:
            assert response.headers["x-consistency"] == "consistent"
        body: dict[str, Any] = response.json()
        assert "stale" not in body
        return body


async def committed(api: Served, token: str) -> None:
    """Wait until order_detail has committed ``token`` (and its post-commit hook has run).

    Not through a query: a read with the token would refresh the cache itself.
    """
    position = LogPosition.parse(token)
    assert await api.runtime.checkpoints.wait(("order_detail",), position, DEADLINE_SECONDS)


def count_fetches(api: Served, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the read-model store's queries from now on."""
    store = api.runtime.backend.read_models
    original = store.fetch
    calls = [0]

    async def fetch(query: Any, *params: Any) -> list[Mapping[str, Any]]:
        calls[0] += 1
        return await original(query, *params)

    monkeypatch.setattr(store, "fetch", fetch)
    return calls


async def test_hot_reads_come_from_redis_without_touching_the_database(
    api: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Shop(api)
    await shop.open(1)
    order_id, token = await shop.order()
    first = await shop.read(order_id, token)
    fetches = count_fetches(api, monkeypatch)
    hits_before = await lookups(api, "hit")
    for _ in range(20):
        assert await shop.read(order_id) == first
    assert await shop.read(order_id, token) == first
    assert fetches[0] == 0
    assert await lookups(api, "hit") >= hits_before + 21
    keys = api_keys(redis.Redis.from_url(str(api.runtime.settings.redis_url)))
    assert any(":q:GetOrderById:" in key for key in keys)


def api_keys(client: redis.Redis) -> list[str]:
    return [key.decode() for key in client.scan_iter(match=f"{PREFIX}:*")]


async def test_every_change_to_an_order_is_visible_through_the_cache(api: Served) -> None:
    shop = Shop(api)
    await shop.open(2)
    order_id, token = await shop.order()
    other_id, other_token = await shop.order(1)
    view = await shop.read(order_id, token)
    await shop.read(order_id)  # cached now
    assert view["item_count"] == 1

    steps: list[tuple[str, Callable[[], Awaitable[httpx.Response]], Callable[[Any], bool]]] = [
        (
            order_id,
            lambda: shop.client.post(
                f"{API}/orders/{order_id}/items",
                json={"product_id": shop.products[1], "quantity": 3, "unit_price": "1.25"},
            ),
            lambda v: v["item_count"] == 2 and v["total_amount"] in ("5.00", "5.0", 5),
        ),
        (
            order_id,
            lambda: shop.client.put(
                f"{API}/orders/{order_id}/shipping-address",
                json={**ADDRESS, "street": "2 Dam Square"},
            ),
            lambda v: v["shipping_address"]["street"] == "2 Dam Square",
        ),
        (
            order_id,
            lambda: shop.client.post(f"{API}/orders/{order_id}/ship"),
            lambda v: v["status"] == "shipped",
        ),
        (
            other_id,
            lambda: shop.client.delete(f"{API}/orders/{other_id}", params={"reason": "changed"}),
            lambda v: v["status"] == "cancelled",
        ),
    ]
    await shop.read(other_id, other_token)
    await shop.read(other_id)
    for target, send, holds in steps:
        before = await shop.read(target)
        assert not holds(before)
        hits = await lookups(api, "hit")
        response = await send()
        assert response.status_code == 200, response.text
        token = response.json()["consistency_token"]
        await committed(api, token)
        # Once the projection has committed, a plain read (from the cache) is new already.
        after = await shop.read(target)
        assert holds(after), after
        assert await shop.read(target) == after
        assert await shop.read(target, token) == after
        assert await lookups(api, "hit") >= hits + 1


async def test_redis_killed_paused_flushed_or_poisoned_never_fails_or_goes_stale(
    api: Served, redis_server: RedisProcess
) -> None:
    shop = Shop(api)
    await shop.open(8)
    orders = [await shop.order(n) for n in range(8)]
    expected = {order_id: 1 for order_id, _ in orders}
    admin = redis_server.client

    async def churn(rounds: int) -> None:
        for _ in range(rounds):
            for n, order_id in enumerate(expected):
                token = await shop.add_item(order_id, n)
                expected[order_id] += 1
                await committed(api, token)
                # Whatever state Redis is in, no read is older than what was committed.
                assert (await shop.read(order_id))["item_count"] == expected[order_id]
                assert (await shop.read(order_id, token))["item_count"] == expected[order_id]

    def poison_values() -> None:
        client = admin()
        for key in client.scan_iter(match=f"{PREFIX}:q:*"):
            client.set(key, b"\xff{not json")

    def poison_everything() -> None:
        client = admin()
        for key in client.scan_iter(match=f"{PREFIX}:*"):
            client.delete(key)
            client.rpush(key, "garbage")

    async def while_churning(disrupt: Callable[[], object]) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            disrupt()

        await asyncio.gather(churn(2), later())

    await churn(1)
    await while_churning(redis_server.kill)
    await churn(1)
    redis_server.start()
    await churn(2)
    await while_churning(lambda: admin().flushall())
    await churn(1)
    await while_churning(poison_values)
    await churn(1)
    await while_churning(poison_everything)
    await churn(1)
    await while_churning(lambda: admin().client_pause(700))
    await churn(1)

    metrics = (await api.client.get("/metrics")).text
    # The outages were noticed (and the database answered meanwhile).
    assert sample(metrics, "cqrskit_query_cache_invalidations_total", outcome="error") > 0
    assert sample(metrics, LOOKUPS, query="GetOrderById", outcome="bypass") > 0
    # Redis is back in use: repeated reads become hits again (bounded wait for the retry).
    deadline = time.monotonic() + 20
    order_id = next(iter(expected))
    hits = await lookups(api, "hit")
    while await lookups(api, "hit") < hits + 3:
        assert time.monotonic() < deadline, "the cache was never used again"
        assert (await shop.read(order_id))["item_count"] == expected[order_id]
        await asyncio.sleep(0.05)
    health = await api.client.get("/health")
    assert health.status_code == 200


async def test_a_worker_in_another_runtime_invalidates_the_cache(
    database_url: str, redis_server: RedisProcess
) -> None:
    options: dict[str, Any] = {"redis_url": redis_server.url, "redis_prefix": PREFIX}
    async with serve(database_url, run_projections=False, **options) as api:
        worker = await Runtime.open(
            orders_service,
            Settings(database_url=database_url, migrate=False, **options),
        )
        try:
            worker.start_projections()
            shop = Shop(api)
            await shop.open(1)
            order_id, token = await shop.order()
            assert (await shop.read(order_id, token))["item_count"] == 1
            for count in range(2, 7):
                await shop.read(order_id)  # cache what the API process sees now
                token = await shop.add_item(order_id)
                assert (await shop.read(order_id, token))["item_count"] == count
                position = LogPosition.parse(token)
                assert await worker.checkpoints.wait(("order_detail",), position, 10.0)
                assert (await shop.read(order_id))["item_count"] == count
            assert await lookups(api, "hit") > 0
        finally:
            await worker.close()
