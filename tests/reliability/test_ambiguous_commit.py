"""Ambiguous commit: the connection dies after PostgreSQL committed, before the reply arrives.

The service reaches PostgreSQL through the fault proxy, which cuts the append's connection
right after the commit (:meth:`~tests.reliability.proxy.FaultProxy.cut_after_commit`). With
the network then down, the server cannot tell whether its command committed: the client
gets 503 problem+json with ``Retry-After`` (an unknown outcome, never a 4xx). After healing,
the client's retry with the same ``Idempotency-Key`` (on the bus: the same ``command_id``)
returns the original result, the server-chosen order id included, and the log holds exactly
one set of events (the history checker). With the network still up, the bus resolves the
lost reply by itself: it finds its own command record and answers the first outcome.

DESIGN.md guarantees 1 and 5.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from cqrskit.command_bus import CommandResult
from cqrskit.config import Settings
from cqrskit.errors import OperationalError
from cqrskit.messages import Command, LogPosition, RecordedEvent
from cqrskit.service import Runtime
from cqrskit.store.protocol import EventStore
from orders.customer import RegisterCustomer
from orders.order import CreateOrder, OrderCreated, OrderShipped, ShipOrder
from orders.product import AddProduct
from orders.service import service as orders_service
from orders.values import Address, OrderLine
from tests.integration.http_server import Served, serve
from tests.reliability.history import History, assert_converged, check_history, read_log
from tests.reliability.orders_load import Attempt, OrdersLoad, Request
from tests.reliability.proxy import APPEND_STATEMENTS, FaultProxy
from tests.reliability.report import record

pytestmark = pytest.mark.faults

T = TypeVar("T")
HEAL_BOUND = 20.0
"""Longest the service may take to work again after the network heals (a bound)."""
UNAVAILABLE = "urn:cqrskit:problem:unavailable"
ADDRESS = {"street": "1 Quay", "city": "Bergen", "postal_code": "5003", "country": "NO"}
# Short database timeouts: a command against the dead network fails in bounded time.
TIMEOUTS: dict[str, Any] = {"database_connect_timeout": 2.0, "database_command_timeout": 5.0}


@dataclass
class Proxied:
    proxy: FaultProxy
    url: str


@pytest.fixture
async def proxied(postgres_url: str) -> AsyncIterator[Proxied]:
    async with FaultProxy.for_url(postgres_url) as proxy:
        yield Proxied(proxy, proxy.url(postgres_url))


async def until_ok(call: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> tuple[T, int]:
    """Call until ``ok`` (bounded by :data:`HEAL_BOUND`); return the result and the tries."""
    deadline = time.monotonic() + HEAL_BOUND
    tries = 0
    while True:
        tries += 1
        result = await call()
        if ok(result):
            return result, tries
        if time.monotonic() > deadline:
            raise AssertionError(f"still failing {HEAL_BOUND} s after healing: {result}")
        await asyncio.sleep(0.05)


# --- over HTTP ------------------------------------------------------------------------------


def assert_unknown(attempt: Attempt) -> None:
    """The client was told "unknown, retry later": 503 problem+json with Retry-After."""
    assert (attempt.status, attempt.kind) == (503, UNAVAILABLE), attempt
    assert attempt.retry_after is not None, attempt
    assert attempt.retry_after.isdigit(), attempt


async def cut_and_retry(proxy: FaultProxy, load: OrdersLoad, request: Request) -> Attempt:
    """Send ``request`` with its commit cut and the network down, then heal and retry."""
    fired = proxy.cut_after_commit(APPEND_STATEMENTS, then_reset=True)
    assert_unknown(await load.attempt(request))
    assert fired.is_set(), "the proxy never saw the append commit"
    assert_unknown(await load.attempt(request))  # still down: still unknown, never a 4xx
    proxy.heal()
    answer, _ = await until_ok(
        lambda: load.attempt(request), lambda a: a.status is not None and a.status < 500
    )
    assert answer.status in (200, 201), answer
    assert answer.replayed, answer
    return answer


async def test_http_retry_after_a_cut_commit_returns_the_original_result(
    proxied: Proxied,
) -> None:
    async with serve(proxied.url, **TIMEOUTS) as api:
        load = OrdersLoad(api.client, seed=8)
        rng = random.Random(8)
        assert (await load.attempt(load.customer(rng))).status == 201
        product = Request(
            str(uuid.uuid4()),
            "POST",
            "/api/v1/products",
            "product-?",
            body={"name": "Lamp", "unit_price": "12.50", "stock": 100},
        )
        load.requests.append(product)
        assert (await load.attempt(product)).status == 201
        assert product.result is not None
        item = {"product_id": product.result["product_id"], "quantity": 2, "unit_price": "12.50"}
        body = {"customer_id": load.customers[0], "items": [item], "shipping_address": ADDRESS}
        order = Request(str(uuid.uuid4()), "POST", "/api/v1/orders", "order-?", body=body)
        load.requests.append(order)

        await cut_and_retry(proxied.proxy, load, order)
        assert order.result is not None
        order_id, first = order.result["order_id"], dict(order.result)
        assert (await load.attempt(order)).replayed  # and again: the same answer
        assert order.result == first

        path = f"/api/v1/orders/{order_id}/ship"
        ship = Request(str(uuid.uuid4()), "POST", path, f"order-{order_id}")
        load.requests.append(ship)
        await cut_and_retry(proxied.proxy, load, ship)
        assert ship.result is not None
        assert ship.result["status"] == "shipped"

        await check_one_set_of_events(api, load, order_id)
        await api.settle()  # projections got through the outage by themselves
        view = await api.client.get(f"/api/v1/orders/{order_id}")
        assert view.json()["status"] == "shipped"
        await assert_converged(api.runtime)


async def check_one_set_of_events(api: Served, load: OrdersLoad, order_id: str) -> None:
    store = api.runtime.backend.store
    await api.visible_head()
    history, problems = await load.history(store)
    assert not problems
    result = await check_history(history, store)
    result.assert_clean()
    assert result.unknown_committed == 4  # two unknown attempts for each cut command
    log = await read_log(store)
    created = [str(e.order_id) for r in log if isinstance(e := r.event, OrderCreated)]
    shipped = [r.event.stream_id for r in log if isinstance(r.event, OrderShipped)]
    assert created == [order_id]
    assert shipped == [f"order-{order_id}"]
    record(
        "ambiguous_commit_http",
        operations=len(history.operations),
        commits_cut=2,
        unknown_committed=result.unknown_committed,
        events=result.events,
        lost=len(result.lost),
        duplicated=len(result.duplicated),
    )


# --- on the command bus ---------------------------------------------------------------------


@pytest.fixture
async def runtime(proxied: Proxied) -> AsyncIterator[Runtime]:
    settings = Settings(database_url=proxied.url, run_projections=False, **TIMEOUTS)
    opened = await Runtime.open(orders_service, settings)
    try:
        yield opened
    finally:
        await opened.close()


async def seed(runtime: Runtime) -> tuple[CreateOrder, ShipOrder]:
    """A customer and a product; the order to create and the command to ship it."""
    bus = runtime.command_bus
    customer = RegisterCustomer(customer_id=uuid.uuid4(), name="Ada", email="ada@example.com")
    product = AddProduct(product_id=uuid.uuid4(), name="Lamp", unit_price=Decimal("3"), stock=9)
    await bus.dispatch(customer)
    await bus.dispatch(product)
    order = CreateOrder(
        order_id=uuid.uuid4(),
        customer_id=customer.customer_id,
        items=[OrderLine(product_id=product.product_id, quantity=1, unit_price=Decimal("3"))],
        shipping_address=Address(**ADDRESS),
    )
    return order, ShipOrder(order_id=order.order_id)


async def read_visible_log(store: EventStore, position: LogPosition | None) -> list[RecordedEvent]:
    """The log, once readers can see ``position`` (on PostgreSQL other sessions' open
    transactions can hold the readable head back for a moment)."""
    if position is not None:
        await until_ok(store.head, lambda head: head >= position)
    return await read_log(store)


async def dispatch_until_ok(runtime: Runtime, command: Command) -> tuple[CommandResult, int]:
    async def once() -> CommandResult | None:
        try:
            return await runtime.command_bus.dispatch(command)
        except OperationalError:
            return None

    result, tries = await until_ok(once, lambda r: r is not None)
    assert result is not None
    return result, tries


async def test_bus_retry_with_the_same_command_id_after_a_cut_commit(
    proxied: Proxied, runtime: Runtime
) -> None:
    history = History()
    store = runtime.backend.store
    commands = await seed(runtime)
    retries = 0
    for command in commands:
        stream = f"order-{commands[0].order_id}"
        fired = proxied.proxy.cut_after_commit(APPEND_STATEMENTS, then_reset=True)
        first = history.begin(command.command_id, stream)
        with pytest.raises(OperationalError):
            await runtime.command_bus.dispatch(command)
        history.unknown(first, "OperationalError")
        assert fired.is_set()
        proxied.proxy.heal()
        again = history.begin(command.command_id, stream)
        result, tries = await dispatch_until_ok(runtime, command)
        retries += tries
        history.ok(again, "replayed", events=len(result.events))
        # The original outcome: exactly the events the cut append stored.
        log = await read_visible_log(store, result.position)
        mine = [r for r in log if r.event.metadata.causation_id == command.command_id]
        assert [r.event.event_id for r in mine] == [r.event.event_id for r in result.events]
        assert result.position == mine[-1].position
    await read_visible_log(store, result.position)
    result_check = await check_history(history, store)
    result_check.assert_clean()
    assert result_check.unknown_committed == 2
    await assert_converged(runtime)
    record(
        "ambiguous_commit_bus",
        commits_cut=2,
        retries=retries,
        unknown_committed=result_check.unknown_committed,
        lost=len(result_check.lost),
        duplicated=len(result_check.duplicated),
    )


async def test_bus_resolves_a_lost_commit_reply_itself_when_the_database_answers(
    proxied: Proxied, runtime: Runtime
) -> None:
    history = History()
    store = runtime.backend.store
    order, ship = await seed(runtime)
    for command in (order, ship):
        fired = proxied.proxy.cut_after_commit(APPEND_STATEMENTS)  # the network stays up
        op = history.begin(command.command_id, f"order-{order.order_id}")
        result = await runtime.command_bus.dispatch(command)
        history.ok(op, "ok", events=len(result.events))
        assert fired.is_set()
        assert result.events, "answered from the command's record, with its events"
    log = await read_visible_log(store, result.position)
    check = await check_history(history, store)
    check.assert_clean()
    assert sum(isinstance(r.event, OrderCreated) for r in log) == 1
    assert sum(isinstance(r.event, OrderShipped) for r in log) == 1
    assert proxied.proxy.stats.cut_after_commit == 2
