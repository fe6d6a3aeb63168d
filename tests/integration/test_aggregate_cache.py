"""The aggregate cache against real databases: stale entries never decide what is stored.

Two backends opened on the same database, each with its own command bus and cache, stand for
two service processes: each one's cache goes stale whenever the other writes. The orders
domain is the workload: stock must never be oversold, and a rejection must not come from an
old cached stock figure.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.errors import ConcurrencyError, CqrskitError
from cqrskit.messages import LOG_START, Command
from cqrskit.middleware import Next, retry_on_conflict
from cqrskit.repository import Repository
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import StreamAppend
from cqrskit.testing.contracts import wait_until_readable
from orders.customer import CustomerRegistered, RegisterCustomer
from orders.handlers import AlreadyExists, register_command_handlers
from orders.order import AddOrderItem, CancelOrder, CreateOrder, ShipOrder
from orders.product import AddProduct, InsufficientStock, Product, RestockProduct, StockReserved
from orders.values import Address, OrderLine
from tests.integration.test_stock_concurrency import (
    ATTEMPTS,
    STOCK,
    assert_no_oversell,
    order,
    seed,
)
from tests.unit.test_repository_cache import waits_for_an_append

ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")


def cached_bus(backend: Backend, size: int = 256, attempts: int = ATTEMPTS) -> CommandBus:
    bus = CommandBus(backend.store, [retry_on_conflict(attempts)], aggregate_cache_size=size)
    register_command_handlers(bus)
    return bus


def order_of(customer_id: UUID, product_id: UUID, quantity: int) -> CreateOrder:
    line = OrderLine(product_id=product_id, quantity=quantity, unit_price=Decimal("19.99"))
    return CreateOrder(
        order_id=uuid4(), customer_id=customer_id, items=[line], shipping_address=ADDRESS
    )


async def warm(bus: CommandBus, backend: Backend, product_id: UUID) -> int:
    """Load the product through the bus's cache; return the stock the cache now holds."""
    product = await Repository(backend.store, bus.cache).load(Product, str(product_id))
    assert bus.cache is not None
    assert bus.cache.version(product.stream_id) == product.version
    return product.stock


async def test_two_cached_buses_on_one_database_cannot_oversell(database_url: str) -> None:
    first = await open_backend(database_url)
    second = await open_backend(database_url, migrate=False)
    try:
        buses = [cached_bus(first), cached_bus(second)]
        customer_id, product_id = await seed(buses[0])
        for bus, backend in zip(buses, (first, second), strict=True):
            assert await warm(bus, backend, product_id) == STOCK
        commands = [order(customer_id, product_id) for _ in range(50)]
        outcomes = await asyncio.gather(
            *(buses[n % 2].dispatch(c) for n, c in enumerate(commands)),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(e, InsufficientStock) for e in errors), errors
        succeeded = [c.order_id for c, o in zip(commands, outcomes, strict=True) if o not in errors]
        failed = [c.order_id for c, o in zip(commands, outcomes, strict=True) if o in errors]
        assert len(succeeded) == STOCK
        positions = [o.position for o in outcomes if isinstance(o, CommandResult) and o.position]
        await wait_until_readable(first.store, max(positions))
        await assert_no_oversell(first, product_id, succeeded, failed)
    finally:
        await second.close()
        await first.close()


async def test_stale_cache_conflicts_and_decides_on_fresh_stock(database_url: str) -> None:
    here = await open_backend(database_url)
    elsewhere = await open_backend(database_url, migrate=False)
    try:
        bus = cached_bus(here)
        other = cached_bus(elsewhere, size=0)
        customer_id, product_id = await seed(bus)
        assert await warm(bus, here, product_id) == STOCK
        await other.dispatch(order_of(customer_id, product_id, 8))  # 2 left; cache says 10
        # The cached stock would allow 5; the store's does not. No oversell, no lost update.
        try:
            await bus.dispatch(order_of(customer_id, product_id, 5))
            raise AssertionError("ordered 5 of 2 units")
        except InsufficientStock:
            pass
        await bus.dispatch(order_of(customer_id, product_id, 2))
        events = await here.store.read_stream(f"product-{product_id}")
        assert [e.version for e in events] == [1, 2, 3]
        assert [e.quantity for e in events if isinstance(e, StockReserved)] == [8, 2]
    finally:
        await elsewhere.close()
        await here.close()


async def test_stale_cache_never_rejects_what_the_store_allows(database_url: str) -> None:
    here = await open_backend(database_url)
    elsewhere = await open_backend(database_url, migrate=False)
    try:
        bus = cached_bus(here, attempts=1)  # no conflict retries: the bus itself re-decides
        other = cached_bus(elsewhere, size=0)
        customer_id, product_id = await seed(other)
        await other.dispatch(order_of(customer_id, product_id, STOCK))
        assert await warm(bus, here, product_id) == 0
        await other.dispatch(RestockProduct(product_id=product_id, quantity=7))
        result = await bus.dispatch(order_of(customer_id, product_id, 5))  # cache says 0
        assert result.position is not None
        events = await here.store.read_stream(f"product-{product_id}")
        assert [e.quantity for e in events if isinstance(e, StockReserved)] == [STOCK, 5]
    finally:
        await elsewhere.close()
        await here.close()


async def test_stale_read_only_customer_is_checked_at_append(sqlite_url: str) -> None:
    """A cached aggregate that was only read goes into the append as a version check."""
    here = await open_backend(sqlite_url)
    elsewhere = await open_backend(sqlite_url, migrate=False)
    try:
        bus = cached_bus(here, attempts=1)
        customer_id, product_id = await seed(bus)
        await bus.dispatch(order_of(customer_id, product_id, 1))  # caches the customer
        # Another process moves the customer's stream (no command changes a customer, so
        # append to it directly, as a later version of the service might).
        stray = CustomerRegistered(
            customer_id=str(customer_id), name="Ada", email="a@b.io", occurred_at=_AT
        )
        await elsewhere.store.append(StreamAppend(f"customer-{customer_id}", 1, [stray]))
        command = order_of(customer_id, product_id, 1)
        try:
            await bus.dispatch(command)
            raise AssertionError("decided on a customer version that had moved")
        except ConcurrencyError:
            pass
        assert await here.store.read_stream(f"order-{command.order_id}") == []
        await bus.dispatch(order_of(customer_id, product_id, 1))  # evicted: fresh now
    finally:
        await elsewhere.close()
        await here.close()


_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
_CUSTOMERS = [UUID(int=n) for n in range(1, 3)]
_PRODUCTS = [UUID(int=n) for n in range(10, 13)]
_ORDERS = [UUID(int=n) for n in range(20, 24)]


@st.composite
def _commands(draw: st.DrawFn) -> list[Command]:
    kinds = st.sampled_from(["customer", "product", "restock", "order", "item", "ship", "cancel"])
    quantity = st.integers(min_value=1, max_value=4)
    commands: list[Command] = []
    for n in range(draw(st.integers(min_value=1, max_value=30))):
        at = _AT + timedelta(seconds=n)
        meta = {"command_id": UUID(int=1000 + n), "timestamp": at}
        kind = draw(kinds)
        product = draw(st.sampled_from(_PRODUCTS))
        order_id = draw(st.sampled_from(_ORDERS))
        line = OrderLine(product_id=product, quantity=draw(quantity), unit_price=Decimal("2.50"))
        command: Command
        if kind == "customer":
            customer = draw(st.sampled_from(_CUSTOMERS))
            command = RegisterCustomer(customer_id=customer, name="C", email="c@d.io", **meta)
        elif kind == "product":
            stock = draw(st.integers(min_value=0, max_value=6))
            command = AddProduct(
                product_id=product, name="P", unit_price=Decimal("2.50"), stock=stock, **meta
            )
        elif kind == "restock":
            command = RestockProduct(product_id=product, quantity=draw(quantity), **meta)
        elif kind == "order":
            customer = draw(st.sampled_from(_CUSTOMERS))
            command = CreateOrder(
                order_id=order_id,
                customer_id=customer,
                items=[line],
                shipping_address=ADDRESS,
                **meta,
            )
        elif kind == "item":
            command = AddOrderItem(order_id=order_id, item=line, **meta)
        elif kind == "ship":
            command = ShipOrder(order_id=order_id, **meta)
        else:
            command = CancelOrder(order_id=order_id, reason="changed my mind", **meta)
        commands.append(command)
    return commands


async def _history(commands: list[Command], cache_size: int) -> tuple[list[str], list[object]]:
    store = MemoryEventStore()
    bus = CommandBus(store, [retry_on_conflict(3)], aggregate_cache_size=cache_size)
    register_command_handlers(bus)
    outcomes = []
    for command in commands:
        try:
            await bus.dispatch(command)
            outcomes.append("ok")
        except CqrskitError as exc:
            outcomes.append(type(exc).__name__)
    log = await store.read_all(after=LOG_START, limit=100_000)
    return outcomes, [(r.position, r.event) for r in log]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_commands())
def test_cache_on_and_off_store_identical_histories(commands: list[Command]) -> None:
    off = asyncio.run(_history(commands, 0))
    on = asyncio.run(_history(commands, 3))  # small: entries get dropped and reloaded too
    assert on == off


# CreateOrder finds a taken id in the append itself.


def counted_bus(backend: Backend, size: int = 256) -> tuple[CommandBus, list[Command]]:
    """A cached bus behind retry_on_conflict, with the attempts that reached the handler."""
    attempts: list[Command] = []

    async def count(command: Command, call_next: Next) -> object:
        attempts.append(command)
        return await call_next(command)

    bus = CommandBus(backend.store, [retry_on_conflict(ATTEMPTS), count], aggregate_cache_size=size)
    register_command_handlers(bus)
    return bus, attempts


async def test_taken_order_id_is_already_exists_and_reserves_nothing(database_url: str) -> None:
    here = await open_backend(database_url)
    elsewhere = await open_backend(database_url, migrate=False)
    try:
        bus, attempts = counted_bus(here)
        other, other_attempts = counted_bus(elsewhere)
        customer_id, product_id = await seed(bus)
        first = order_of(customer_id, product_id, 1)
        await bus.dispatch(first)
        product_stream = f"product-{product_id}"
        before = await here.store.read_stream(product_stream)
        for dispatcher, counted, quantity in [
            (bus, attempts, 1),  # this process: its cache holds the order and the product
            (other, other_attempts, 1),  # another process, cold cache
            (bus, attempts, STOCK),  # more than is left: the taken id is still what is said
            (other, other_attempts, STOCK),
        ]:
            counted.clear()
            retry = order_of(customer_id, product_id, quantity)
            retry = retry.model_copy(update={"order_id": first.order_id})
            with pytest.raises(AlreadyExists):
                await dispatcher.dispatch(retry)
            assert len(counted) == 1  # a taken id is not a conflict to retry
        assert await here.store.read_stream(product_stream) == before  # nothing reserved
        assert len(await here.store.read_stream(f"order-{first.order_id}")) == 1
    finally:
        await elsewhere.close()
        await here.close()


async def test_racing_creates_of_one_order_id_store_one_order(database_url: str) -> None:
    here = await open_backend(database_url)
    elsewhere = await open_backend(database_url, migrate=False)
    try:
        buses = [cached_bus(here), cached_bus(elsewhere)]
        customer_id, product_id = await seed(buses[0])
        order_id = uuid4()
        commands = [
            order_of(customer_id, product_id, 1).model_copy(update={"order_id": order_id})
            for _ in range(8)
        ]
        outcomes = await asyncio.gather(
            *(buses[n % 2].dispatch(c) for n, c in enumerate(commands)),
            return_exceptions=True,
        )
        stored = [o for o in outcomes if isinstance(o, CommandResult)]
        assert len(stored) == 1, outcomes
        assert all(isinstance(o, AlreadyExists) for o in outcomes if o not in stored), outcomes
        events = await here.store.read_stream(f"product-{product_id}")
        assert [e.order_id for e in events if isinstance(e, StockReserved)] == [str(order_id)]
        assert len(await here.store.read_stream(f"order-{order_id}")) == 1
    finally:
        await elsewhere.close()
        await here.close()


# The cache after conflicts on a real store.


async def test_conflict_past_a_save_of_this_process_evicts_the_stale_product(
    database_url: str,
) -> None:
    """The store reports the version it found, so a cache entry behind it is not kept."""
    here = await open_backend(database_url)
    elsewhere = await open_backend(database_url, migrate=False)
    try:
        bus = cached_bus(here)
        customer_id, product_id = await seed(bus)
        assert bus.cache is not None
        assert await warm(bus, here, product_id) == STOCK
        loser, winner = Repository(here.store, bus.cache), Repository(here.store, bus.cache)
        for repo, order_id in ((loser, "loser"), (winner, "winner")):
            product = await repo.load(Product, str(product_id))
            product.reserve(order_id, 1, at=_AT)
        await winner.save()  # this process: product@2 in the cache
        await cached_bus(elsewhere, size=0).dispatch(order_of(customer_id, product_id, 1))
        with pytest.raises(ConcurrencyError) as raised:
            await loser.save()
        assert raised.value.stream_id == f"product-{product_id}"
        assert bus.cache.version(f"product-{product_id}") is None
        assert await warm(bus, here, product_id) == STOCK - 2
    finally:
        await elsewhere.close()
        await here.close()


async def test_cache_matches_the_store_after_racing_orders_in_one_process(
    database_url: str,
) -> None:
    """Racing saves keep their state cached across local conflicts, and none stays in flight."""
    backend = await open_backend(database_url)
    try:
        bus = cached_bus(backend)
        assert bus.cache is not None
        customer_id, product_id = await seed(bus)
        assert await warm(bus, backend, product_id) == STOCK
        commands = [order(customer_id, product_id) for _ in range(3 * STOCK)]
        outcomes = await asyncio.gather(*map(bus.dispatch, commands), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(e, InsufficientStock) for e in errors), errors
        assert len(errors) == 2 * STOCK
        stream_id = f"product-{product_id}"
        assert not await waits_for_an_append(bus.cache, stream_id)
        cached = bus.cache.version(stream_id)
        assert cached in (None, await backend.store.stream_version(stream_id))
        assert await warm(bus, backend, product_id) == 0
    finally:
        await backend.close()
