"""Idempotent dispatch on the memory store: replays, key reuse, keys in flight, preconditions."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from uuid import uuid4

import pytest

from cqrskit.command_bus import CommandBus
from cqrskit.errors import (
    CommandInProgress,
    IdempotencyKeyReused,
    PreconditionFailed,
)
from cqrskit.http.idempotency import parse_if_match
from cqrskit.idempotency import (
    CommandRecord,
    StoredCommand,
    canonical_command_hash,
    command_hash,
    idempotent,
    request_hash,
)
from cqrskit.messages import LOG_START, Command
from cqrskit.middleware import retry_on_conflict
from cqrskit.repository import Repository
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import AppendResult, StreamAppend
from orders.customer import RegisterCustomer
from orders.handlers import register_command_handlers
from orders.order import AddOrderItem, CreateOrder, Order
from orders.product import AddProduct, Product, RestockProduct
from orders.values import Address, OrderLine

ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")


class Ping(Command):
    """A command that stores nothing."""

    note: str = ""


def make_bus(store: MemoryEventStore) -> tuple[CommandBus, list[Command]]:
    bus = CommandBus(store, [retry_on_conflict(3)])
    register_command_handlers(bus)
    seen: list[Command] = []

    async def ping(command: Ping, repository: Repository) -> None:
        seen.append(command)

    bus.register(Ping, ping)
    return bus, seen


async def seed(bus: CommandBus, stock: int = 10) -> tuple[CreateOrder, OrderLine]:
    customer_id, product_id = uuid4(), uuid4()
    await bus.dispatch(RegisterCustomer(customer_id=customer_id, name="Ada", email="a@b.io"))
    price = Decimal("2.50")
    await bus.dispatch(AddProduct(product_id=product_id, name="Pen", unit_price=price, stock=stock))
    line = OrderLine(product_id=product_id, quantity=1, unit_price=price)
    create = CreateOrder(
        order_id=uuid4(), customer_id=customer_id, items=[line], shipping_address=ADDRESS
    )
    return create, line


async def test_same_command_twice_replays_the_first_result() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, line = await seed(bus)
    first = await bus.dispatch(create)
    add = AddOrderItem(order_id=create.order_id, item=line)
    added = await bus.dispatch(add)
    assert await bus.dispatch(add) == added
    assert await bus.dispatch(create) == first
    order_stream = Order.stream_id_for(str(create.order_id))
    assert [e.version for e in await store.read_stream(order_stream)] == [1, 2]


async def test_key_reused_with_another_payload_is_refused() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, line = await seed(bus)
    await bus.dispatch(create, key="k")
    before = await store.head()
    other = create.model_copy(update={"order_id": uuid4(), "command_id": uuid4()})
    with pytest.raises(IdempotencyKeyReused):
        await bus.dispatch(other, key="k", request_hash="another request")
    with pytest.raises(IdempotencyKeyReused):
        await bus.dispatch(AddOrderItem(order_id=create.order_id, item=line), key="k")
    assert await store.head() == before


async def test_keys_are_scoped_to_the_caller() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    _, line = await seed(bus)
    restock = RestockProduct(product_id=line.product_id, quantity=1)
    await bus.dispatch(restock.model_copy(update={"user_id": "alice"}), key="k")
    await bus.dispatch(restock.model_copy(update={"user_id": "bob"}), key="k")
    await bus.dispatch(restock.model_copy(update={"user_id": "bob"}), key="k")
    product = await store.read_stream(Product.stream_id_for(str(line.product_id)))
    assert len(product) == 3  # added, alice's restock, bob's restock


async def test_replay_returns_the_first_commands_ids() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, _ = await seed(bus)
    with idempotent("http:k", request_hash="r") as first:
        result = await bus.dispatch(create)
    assert not first.replayed
    retry = create.model_copy(update={"order_id": uuid4(), "command_id": uuid4()})
    with idempotent("http:k", request_hash="r") as second:
        again = await bus.dispatch(retry)
    assert second.replayed
    assert isinstance(second.command, CreateOrder)
    assert second.command.order_id == create.order_id
    assert again == result
    assert await store.read_stream(Order.stream_id_for(str(retry.order_id))) == []


async def test_command_without_events_records_its_key() -> None:
    store = MemoryEventStore()
    bus, seen = make_bus(store)
    ping = Ping(note="x")
    await bus.dispatch(ping)
    assert await store.find_command("anonymous", str(ping.command_id)) is not None
    with idempotent() as outcome:
        await bus.dispatch(ping)
    assert outcome.replayed
    # The handler may run again (no lookup before deciding), but nothing new is recorded.
    assert all(command == ping for command in seen)


async def test_rejected_command_does_not_consume_its_key() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, line = await seed(bus, stock=0)
    with pytest.raises(Exception, match="stock"):
        await bus.dispatch(create, key="k")
    assert await store.find_command("anonymous", "k") is None
    await bus.dispatch(RestockProduct(product_id=line.product_id, quantity=5))
    result = await bus.dispatch(create, key="k")
    assert len(result.events) == 2  # the reservation and the order


async def test_key_in_flight_is_refused() -> None:
    store = MemoryEventStore()
    bus = CommandBus(store)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(command: Ping, repository: Repository) -> None:
        started.set()
        await release.wait()

    bus.register(Ping, slow)
    ping = Ping()
    first = asyncio.create_task(bus.dispatch(ping))
    await started.wait()
    with pytest.raises(CommandInProgress):
        await bus.dispatch(ping)
    release.set()
    await first
    with idempotent() as outcome:
        await bus.dispatch(ping)
    assert outcome.replayed


async def test_unknown_outcome_retry_stores_nothing_new() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, line = await seed(bus)
    await bus.dispatch(create)
    add = AddOrderItem(order_id=create.order_id, item=line)
    original_append, original_find = store.append, store.find_command
    down = False

    async def lost_reply(
        *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        # The commit happens, then the connection drops before the reply (and stays down
        # long enough that the bus's own look-up fails too).
        nonlocal down
        result = await original_append(*streams, command=command)
        if not down and len(calls) == 0:
            down = True
            calls.append(1)
            raise ConnectionResetError("reply lost")
        return result

    async def find(scope: str, key: str) -> StoredCommand | None:
        if down:
            raise ConnectionResetError("database unreachable")
        return await original_find(scope, key)

    calls: list[int] = []
    store.append = lost_reply  # type: ignore[method-assign]
    store.find_command = find  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError):
        await bus.dispatch(add)
    down = False
    retried = await bus.dispatch(add)
    order_stream = Order.stream_id_for(str(create.order_id))
    events = await store.read_stream(order_stream)
    assert [e.version for e in events] == [1, 2]
    log = await store.read_all(after=LOG_START, limit=100)
    assert retried.events == log[-len(retried.events) :]
    assert events[1] in [r.event for r in retried.events]
    assert retried.position == await store.head()


async def test_stale_expected_version_fails_without_retry() -> None:
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    create, line = await seed(bus)
    await bus.dispatch(create)
    stream = Order.stream_id_for(str(create.order_id))
    add = AddOrderItem(order_id=create.order_id, item=line)
    await bus.dispatch(add, expect={stream: 1})
    with pytest.raises(PreconditionFailed) as failed:
        await bus.dispatch(AddOrderItem(order_id=create.order_id, item=line), expect={stream: 1})
    assert failed.value.current_version == 2
    assert len(await store.read_stream(stream)) == 2


class Tag(Command):
    """A command with a mapping in its payload."""

    labels: dict[str, int]


async def test_retry_with_reordered_mapping_keys_replays() -> None:
    # The command hash follows the JSON's key order; the bus compares the canonical form
    # before refusing the key, so a retry built with another dict order is the same command.
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    seen: list[Tag] = []

    async def tag(command: Tag, repository: Repository) -> None:
        seen.append(command)

    bus.register(Tag, tag)
    first = Tag(labels={"a": 1, "b": 2})
    retry = Tag(command_id=first.command_id, labels={"b": 2, "a": 1})
    assert command_hash(first) != command_hash(retry)
    assert canonical_command_hash(first) == canonical_command_hash(retry)
    await bus.dispatch(first)
    with idempotent() as outcome:
        await bus.dispatch(retry)
    assert outcome.replayed
    with pytest.raises(IdempotencyKeyReused):
        await bus.dispatch(Tag(command_id=first.command_id, labels={"a": 1, "b": 3}))


async def test_caller_hash_is_never_matched_by_payload() -> None:
    # A record under a caller's request hash (HTTP) only replays for that hash, even when a
    # dispatch without one sends the same payload.
    store = MemoryEventStore()
    bus, _ = make_bus(store)
    ping = Ping(note="x")
    with idempotent(request_hash="http request"):
        await bus.dispatch(ping)
    with pytest.raises(IdempotencyKeyReused):
        await bus.dispatch(ping)


def test_hashes_ignore_volatile_fields_and_key_order() -> None:
    ping = Ping(note="a")
    assert command_hash(ping) == command_hash(Ping(note="a", user_id="u"))
    assert command_hash(ping) != command_hash(Ping(note="b"))
    assert canonical_command_hash(ping) == canonical_command_hash(Ping(note="a", user_id="u"))
    assert canonical_command_hash(ping) != canonical_command_hash(Ping(note="b"))
    a = request_hash("POST", "/x", "", b'{"a": 1, "b": [1, 2]}')
    assert a == request_hash("post", "/x", "", b'{"b":[1,2],"a":1}')
    assert a != request_hash("POST", "/x", "", b'{"a": 2, "b": [1, 2]}')
    assert a != request_hash("POST", "/y", "", b'{"a": 1, "b": [1, 2]}')
    assert a != request_hash("POST", "/x", "", b'{"a": 1, "b": [1, 2]}', '"3"')


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"3"', 3), (' "12" ', 12), ("*", None), ("3", -2), ('W/"3"', -2), ('"x"', -2), ('""', -2)],
)
def test_parse_if_match(value: str, expected: int | None) -> None:
    assert parse_if_match(value) == expected
