"""Idempotent commands on SQLite and PostgreSQL: unknown outcomes, racing duplicates, reuse.

Two backends opened on one database stand in for two API processes: their in-process
registries of keys in flight know nothing of each other, so only the store's unique
``(scope, key)`` constraint keeps a command from being stored twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from uuid import uuid4

import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.errors import CommandInProgress, IdempotencyKeyReused, OperationalError
from cqrskit.idempotency import (
    CommandRecord,
    StoredCommand,
    canonical_command_hash,
    command_hash,
    idempotent,
)
from cqrskit.messages import LOG_START
from cqrskit.middleware import retry_on_conflict
from cqrskit.store.protocol import AppendResult, StreamAppend
from cqrskit.testing.contracts import wait_until_readable
from orders.customer import RegisterCustomer
from orders.handlers import register_command_handlers
from orders.order import AddOrderItem, CreateOrder, Order
from orders.product import AddProduct
from orders.values import Address, OrderLine

ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")


@pytest.fixture
async def backends(database_url: str) -> AsyncIterator[tuple[Backend, Backend]]:
    first = await open_backend(database_url)
    second = await open_backend(database_url, migrate=False)
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()


def make_bus(backend: Backend) -> CommandBus:
    bus = CommandBus(backend.store, [retry_on_conflict(20)])
    register_command_handlers(bus)
    return bus


async def seed(bus: CommandBus) -> tuple[CreateOrder, OrderLine]:
    customer_id, product_id = uuid4(), uuid4()
    await bus.dispatch(RegisterCustomer(customer_id=customer_id, name="Ada", email="a@b.io"))
    price = Decimal("2.50")
    await bus.dispatch(AddProduct(product_id=product_id, name="Pen", unit_price=price, stock=1000))
    line = OrderLine(product_id=product_id, quantity=1, unit_price=price)
    create = CreateOrder(
        order_id=uuid4(), customer_id=customer_id, items=[line], shipping_address=ADDRESS
    )
    return create, line


class LostReplies:
    """Make the next append commit and then fail as if the connection dropped."""

    def __init__(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.down = False
        store = backend.store
        append, find = store.append, store.find_command

        async def lost_reply(
            *streams: StreamAppend, command: CommandRecord | None = None
        ) -> AppendResult:
            result = await append(*streams, command=command)
            if self.armed:
                self.armed = False
                self.down = True  # the bus's own look-up fails too
                raise OperationalError("connection lost after COMMIT")
            return result

        async def find_command(scope: str, key: str) -> StoredCommand | None:
            if self.down:
                raise OperationalError("database unreachable")
            return await find(scope, key)

        monkeypatch.setattr(store, "append", lost_reply)
        monkeypatch.setattr(store, "find_command", find_command)


async def test_retry_after_unknown_outcome_stores_once(
    backends: tuple[Backend, Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, other = backends
    bus = make_bus(backend)
    create, line = await seed(bus)
    lost = LostReplies(backend, monkeypatch)
    for command in (create, AddOrderItem(order_id=create.order_id, item=line)):
        lost.armed = True
        with pytest.raises(OperationalError):
            await bus.dispatch(command)
        lost.down = False
        retried = await bus.dispatch(command)
        # Another process retrying the same command gets the same outcome.
        elsewhere = await make_bus(other).dispatch(command)
        assert elsewhere == retried
        await wait_until_readable(backend.store, retried.position)  # type: ignore[arg-type]
        log = await backend.store.read_all(after=LOG_START, limit=1000)
        assert log[-len(retried.events) :] == retried.events
    stream = Order.stream_id_for(str(create.order_id))
    assert [e.version for e in await backend.store.read_stream(stream)] == [1, 2]


async def test_retry_with_a_key_replays_the_first_command(
    backends: tuple[Backend, Backend],
) -> None:
    backend, _ = backends
    bus = make_bus(backend)
    create, _ = await seed(bus)
    with idempotent("http:abc", request_hash="same request"):
        first = await bus.dispatch(create)
    retry = create.model_copy(update={"order_id": uuid4(), "command_id": uuid4()})
    with idempotent("http:abc", request_hash="same request") as outcome:
        again = await bus.dispatch(retry)
    assert outcome.replayed
    assert isinstance(outcome.command, CreateOrder)
    assert outcome.command.order_id == create.order_id
    assert again == first
    assert await backend.store.read_stream(Order.stream_id_for(str(retry.order_id))) == []
    with (
        pytest.raises(IdempotencyKeyReused),
        idempotent("http:abc", request_hash="another request"),
    ):
        await bus.dispatch(retry)


async def test_record_hashed_by_an_earlier_release_still_replays(
    backends: tuple[Backend, Backend],
) -> None:
    # Earlier releases recorded the canonical hash (sorted-key JSON); this one hashes the
    # command's own JSON. A retry of a command recorded before the upgrade must replay.
    backend, _ = backends
    bus = make_bus(backend)
    create, _ = await seed(bus)
    legacy = canonical_command_hash(create)
    assert legacy != command_hash(create)
    with idempotent(request_hash=legacy):
        first = await bus.dispatch(create)
    stored = await backend.store.find_command("anonymous", str(create.command_id))
    assert stored is not None
    assert stored.record.request_hash == legacy
    with idempotent() as outcome:
        again = await bus.dispatch(create)
    assert outcome.replayed
    assert again == first
    other = create.model_copy(update={"order_id": uuid4()})
    with pytest.raises(IdempotencyKeyReused):
        await bus.dispatch(other)


async def test_concurrent_duplicates_store_one_set_of_events(
    backends: tuple[Backend, Backend],
) -> None:
    buses = [make_bus(backend) for backend in backends]
    create, line = await seed(buses[0])
    await buses[0].dispatch(create)
    for _ in range(5):
        add = AddOrderItem(order_id=create.order_id, item=line)
        outcomes = await asyncio.gather(
            *(buses[i % 2].dispatch(add) for i in range(16)), return_exceptions=True
        )
        results = [o for o in outcomes if isinstance(o, CommandResult)]
        others = [o for o in outcomes if not isinstance(o, CommandResult)]
        assert results, outcomes
        assert all(isinstance(o, CommandInProgress) for o in others), others
        assert all(r == results[0] for r in results)
    stream = Order.stream_id_for(str(create.order_id))
    versions = [e.version for e in await backends[1].store.read_stream(stream)]
    assert versions == [1, 2, 3, 4, 5, 6]
