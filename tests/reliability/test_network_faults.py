"""Network faults between the service and PostgreSQL, Redis and NATS, through the fault proxy.

PostgreSQL: clients keep sending recorded commands (:class:`OrdersLoad`) to a real uvicorn
whose database connections pass through the proxy, while the proxy adds latency (small, then
larger than the request deadline), blackholes the network and resets every connection. The
checks:

- no request hangs past its deadline: the client's own timeout is the deadline plus a margin,
  and no request may run into it (nor see a dropped connection);
- every error is 503 problem+json with ``Retry-After``; a definite 4xx is only ever a domain
  answer for a command that stored nothing (the history checker's *leaked*);
- after each fault heals, the service accepts commands again within a bound (polled);
- no acknowledged write is lost or duplicated, and every unknown outcome resolves to exactly
  one outcome when retried with its key; read models equal a rebuild.

Redis (the query cache): blackholed, reset or slow, GETs still answer from the database with
data as fresh as the consistency token asks. NATS (the integration-event publisher):
blackholed or reset, commands are unaffected, and after healing the publisher catches up and
the stream holds every event exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from cqrskit.http import CONSISTENCY_HEADER
from tests.conftest import require_service
from tests.integration.http_server import Served, serve
from tests.integration.nats_server import running_nats
from tests.reliability.history import Outcome, assert_converged, check_history, read_log
from tests.reliability.orders_load import OrdersLoad
from tests.reliability.proxy import FaultProxy
from tests.reliability.report import record
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

DEADLINE = 1.5
"""The service's ``request_timeout`` in these tests (seconds)."""
MARGIN = 2.0
"""A client gives up at ``DEADLINE + MARGIN``: a request unanswered by then has hung."""
RECOVERY_BOUND = 15.0
"""Longest the service may take to accept commands again after a fault heals (a bound)."""
SETTINGS: dict[str, Any] = {
    "request_timeout": DEADLINE,
    # Longer than a client waits: only the request deadline can answer a blackholed request
    # in time (these bound background work: projections fail, back off and retry).
    "database_connect_timeout": 2.0,
    "database_command_timeout": 10.0,
    "pool_size": 5,
}
CLIENTS = TIER.pick(fast=3, full=6, soak=12)
SCALE = TIER.pick(fast=1.0, full=3.0, soak=15.0)
"""How much longer than the fast tier each fault lasts."""
ERROR_KINDS = {"urn:cqrskit:problem:unavailable", "urn:cqrskit:problem:timeout"}
ADDRESS = {"street": "2 Pier", "city": "Kiel", "postal_code": "24103", "country": "DE"}

Fault = Callable[[FaultProxy], None]
PG_FAULTS: list[tuple[str, Fault, float]] = [
    # name, fault, seconds it lasts while the clients keep sending
    ("latency", lambda p: p.latency(to_upstream=0.02, to_client=0.02), 1.5 * SCALE),
    ("slow", lambda p: p.latency(to_upstream=0.8, to_client=0.8), 2.5 * SCALE),
    # Longer than a client waits: without the request deadline a request would hang.
    ("blackhole", FaultProxy.blackhole, DEADLINE + MARGIN + 1.0 * SCALE),
    ("reset", FaultProxy.reset, 1.5 * SCALE),
]


class Timed(httpx.AsyncClient):
    """A client of an API that gives up at the deadline plus a margin, and times answers."""

    def __init__(self, api: Served) -> None:
        super().__init__(base_url=api.url, timeout=DEADLINE + MARGIN)
        self.slowest = 0.0

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        try:
            return await super().send(request, **kwargs)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)


async def recover(load: OrdersLoad, rng: random.Random) -> float:
    """Register a customer until it is acknowledged (bounded); return the seconds it took."""
    started = time.monotonic()
    request = load.customer(rng)
    while (await load.attempt(request)).outcome is Outcome.UNKNOWN:
        if time.monotonic() - started > RECOVERY_BOUND:
            raise AssertionError(f"no command acknowledged {RECOVERY_BOUND} s after healing")
        await asyncio.sleep(0.05)
    assert request.outcome is Outcome.OK, request.attempts[-1]
    return time.monotonic() - started


def bad_errors(load: OrdersLoad) -> list[str]:
    """Every attempt that is neither a 2xx, a domain 4xx, nor a 503 problem with Retry-After."""
    bad = []
    for request in load.requests:
        for attempt in request.attempts:
            if attempt.status is None:
                bad.append(f"{request.method} {request.path}: no answer ({attempt.kind})")
            elif attempt.status >= 500 and not (
                attempt.status == 503 and attempt.kind in ERROR_KINDS and attempt.retry_after
            ):
                bad.append(f"{request.method} {request.path}: {attempt}")
    return bad


async def test_postgres_latency_blackhole_and_resets(postgres_url: str) -> None:
    async with (
        FaultProxy.for_url(postgres_url) as proxy,
        serve(proxy.url(postgres_url), **SETTINGS) as api,
        Timed(api) as client,
    ):
        load = OrdersLoad(client, seed=1908)
        rng = random.Random(1908)
        stop = asyncio.Event()
        clients = [asyncio.create_task(load.client_loop(n, stop)) for n in range(CLIENTS)]
        recoveries: dict[str, float] = {}
        try:
            await asyncio.sleep(1.0)  # a healthy start
            for name, fault, seconds in PG_FAULTS:
                fault(proxy)
                await asyncio.sleep(seconds)  # the clients keep sending meanwhile
                proxy.heal()
                recoveries[name] = await recover(load, rng)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        unknown = await load.resolve(timeout=60.0)
        assert bad_errors(load) == []

        store = api.runtime.backend.store
        await api.visible_head(await api.head())
        history, problems = await load.history(store)
        # The server may answer a first attempt from its own record after a lost reply.
        assert [p for p in problems if "answered as a replay" not in p] == []
        result = await check_history(history, store)
        result.assert_clean()
        await assert_converged(api.runtime)

    statuses = Counter(str(a.status) for r in load.requests for a in r.attempts)
    kinds = Counter(a.kind for r in load.requests for a in r.attempts if a.status == 503)
    assert statuses["503"] > 0, "the faults never reached a request"
    assert result.ok > 0
    record(
        "network_faults_postgres",
        operations=len(history.operations),
        requests=len(load.requests),
        faults=len(PG_FAULTS),
        acknowledged=result.ok,
        definite_4xx=result.failed,
        answered_503=statuses["503"],
        answered_503_timeout=kinds["urn:cqrskit:problem:timeout"],
        answered_503_unavailable=kinds["urn:cqrskit:problem:unavailable"],
        unknown_requests=unknown,
        unknown_committed=result.unknown_committed,
        unknown_absent=result.unknown_absent,
        lost=len(result.lost),
        duplicated=len(result.duplicated),
        slowest_answer_s=round(client.slowest, 2),
        deadline_s=DEADLINE,
        worst_recovery_s=round(max(recoveries.values()), 2),
        **{f"recovery_{name}_s": round(seconds, 2) for name, seconds in recoveries.items()},
    )


# --- Redis: the query cache -----------------------------------------------------------------

REDIS_FAULTS: list[tuple[str, Fault]] = [
    ("blackhole", FaultProxy.blackhole),
    ("reset", FaultProxy.reset),
    ("slow", lambda p: p.latency(to_client=1.0)),  # past the cache's timeout
]


async def test_redis_faults_leave_queries_answered_from_the_database(sqlite_url: str) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    options = {"redis_prefix": f"cqrskit-faults-{uuid.uuid4().hex[:12]}", **SETTINGS}
    async with (
        FaultProxy("127.0.0.1", 6379) as proxy,
        serve(sqlite_url, redis_url=f"redis://127.0.0.1:{proxy.port}/0", **options) as api,
        Timed(api) as client,
    ):
        order_id, item, token = await place_order(client)
        cache = api.runtime.query_cache
        assert cache is not None
        path = f"/api/v1/orders/{order_id}"
        items, answered = 1, 0
        for name, fault in REDIS_FAULTS:
            for _ in range(TIER.pick(fast=2, full=10, soak=50)):
                await get_order(client, path, token, items)  # cached, or filled
                fault(proxy)
                await get_order(client, path, token, items)  # the lookup meets the fault
                added = await client.post(f"{path}/items", json=item)
                assert added.status_code == 200, (name, added.text)
                token, items = added.headers[CONSISTENCY_HEADER], items + 1
                # As fresh as the token asks, from the database while Redis is out.
                await get_order(client, path, token, items)
                await get_order(client, path, None, items)
                answered += 3
                proxy.heal()
        lookups = Counter({k: n for k, n in cache.stats.items() if k[0] == "GetOrderById"})
        assert lookups["GetOrderById", "error"] > 0, f"no lookup met a fault: {cache.stats}"
        errors = sum(n for (_, outcome), n in cache.stats.items() if outcome == "error")

        # Once healed the cache is used again (a bound, polled).
        hits = cache.stats["GetOrderById", "hit"]
        deadline = time.monotonic() + RECOVERY_BOUND
        while cache.stats["GetOrderById", "hit"] == hits:
            assert time.monotonic() < deadline, f"the cache was not used again: {cache.stats}"
            await get_order(client, path, None, items)
            await asyncio.sleep(0.05)
    record(
        "network_faults_redis",
        faults=len(REDIS_FAULTS) * TIER.pick(fast=2, full=10, soak=50),
        queries_during_faults=answered,
        failed_queries=0,
        cache_errors=errors,
        slowest_answer_s=round(client.slowest, 2),
    )


async def place_order(client: httpx.AsyncClient) -> tuple[str, dict[str, Any], str]:
    """A customer, a product and an order; its id, an item to add, and its token."""
    customer = await client.post("/api/v1/customers", json={"name": "Ola", "email": "o@x.no"})
    product = await client.post(
        "/api/v1/products", json={"name": "Kettle", "unit_price": "20.00", "stock": 10_000}
    )
    assert customer.status_code == product.status_code == 201
    item = {"product_id": product.json()["product_id"], "quantity": 1, "unit_price": "20.00"}
    body = {"customer_id": customer.json()["customer_id"], "items": [item]}
    order = await client.post("/api/v1/orders", json={**body, "shipping_address": ADDRESS})
    assert order.status_code == 201, order.text
    return order.json()["order_id"], item, order.headers[CONSISTENCY_HEADER]


async def get_order(client: httpx.AsyncClient, path: str, token: str | None, items: int) -> None:
    """GET the order: 200 with ``items`` lines (with a token: at least that fresh)."""
    headers = {CONSISTENCY_HEADER: token} if token else {}
    response = await client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    if token:
        assert len(response.json()["items"]) == items
    else:
        assert len(response.json()["items"]) <= items


# --- NATS: the integration-event publisher ----------------------------------------------------


async def test_nats_faults_leave_commands_unaffected(sqlite_url: str, tmp_path: Path) -> None:
    with running_nats(tmp_path) as server:
        async with (
            FaultProxy.for_url(server.url) as proxy,
            serve(sqlite_url, nats_url=proxy.url(server.url), **SETTINGS) as api,
            Timed(api) as client,
        ):
            load = OrdersLoad(client, seed=4222)
            rng = random.Random(4222)
            publisher = api.runtime.publisher
            assert publisher is not None
            await send_commands(load, rng, 0.5)
            await published_everything(api)  # healthy first
            for fault in (FaultProxy.blackhole, FaultProxy.reset):
                failures = publisher.status.failures
                fault(proxy)
                await send_commands(load, rng, 1.0 * SCALE)
                # Until the publisher has noticed (a blackhole: its ack timeout), bounded.
                deadline = time.monotonic() + 30.0
                while publisher.status.failures == failures:
                    assert time.monotonic() < deadline, f"never failed: {publisher.status}"
                    await send_commands(load, rng, 0.2)
                proxy.heal()
            await published_everything(api)
            events = len(await read_log(api.runtime.backend.store))
            stream = api.runtime.settings.nats_stream
        connection = await nats.connect(server.url)
        try:
            info = await connection.jetstream().stream_info(stream)
        finally:
            await connection.close()
    assert info.state.messages == events  # every event once: none lost, none doubled
    record(
        "network_faults_nats",
        commands=len(load.requests),
        unknown_commands=0,
        faults=2,
        publisher_failures=publisher.status.failures,
        events=events,
        published=info.state.messages,
        slowest_answer_s=round(client.slowest, 2),
    )


async def send_commands(load: OrdersLoad, rng: random.Random, seconds: float) -> None:
    """Send commands for ``seconds``: each must get a definite answer (none unknown)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        attempt = await load.attempt(load.next_request(rng))
        assert attempt.outcome is not Outcome.UNKNOWN, attempt
        await asyncio.sleep(0.02)  # pacing: a steady trickle, not a benchmark


async def published_everything(api: Served) -> None:
    """Wait (bounded: the publisher backs off up to 30 s) until it has published the log."""
    publisher = api.runtime.publisher
    assert publisher is not None
    head = await api.visible_head(await api.head())
    read_models = api.runtime.backend.read_models
    deadline = time.monotonic() + 60.0
    while await read_models.checkpoint(publisher.name) < head:
        assert time.monotonic() < deadline, f"publisher stuck: {publisher.status}"
        await asyncio.sleep(0.1)
