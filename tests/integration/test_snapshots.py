"""Snapshots on SQLite and PostgreSQL: snapshot plus later events equals a full replay.

Random command sequences run through the orders command bus with a small snapshot interval;
then every product and order loads both ways (from its snapshot, and replayed from version 1)
and must be identical. Snapshots edited behind the repository's back (garbage state, an old
schema version) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4, uuid5

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrskit.aggregate import Aggregate
from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus
from cqrskit.errors import CqrskitError
from cqrskit.messages import Command
from cqrskit.middleware import retry_on_conflict
from cqrskit.repository import Repository
from cqrskit.snapshots import Snapshot, Snapshotter, snapshot_store_for
from orders.customer import RegisterCustomer
from orders.handlers import register_command_handlers
from orders.order import AddOrderItem, CancelOrder, CreateOrder, Order, ShipOrder
from orders.product import AddProduct, Product, RestockProduct
from orders.values import Address, OrderLine

_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
_ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")

_step = st.tuples(
    st.sampled_from(["restock", "order", "order", "order", "item", "ship", "cancel"]),
    st.integers(min_value=0, max_value=1),  # product
    st.integers(min_value=0, max_value=2),  # order
    st.integers(min_value=1, max_value=3),  # quantity
)


def _commands(steps: list[tuple[str, int, int, int]], ns: UUID) -> list[Command]:
    customer = uuid5(ns, "customer")
    products = [uuid5(ns, f"product-{n}") for n in range(2)]
    orders = [uuid5(ns, f"order-{n}") for n in range(3)]
    commands: list[Command] = [RegisterCustomer(customer_id=customer, name="C", email="c@d.io")]
    commands += [
        AddProduct(product_id=p, name="P", unit_price=Decimal("2.50"), stock=20) for p in products
    ]
    for n, (kind, product, order, quantity) in enumerate(steps):
        meta: dict[str, Any] = {"timestamp": _AT + timedelta(seconds=n)}
        line = OrderLine(
            product_id=products[product], quantity=quantity, unit_price=Decimal("2.50")
        )
        order_id = orders[order]
        if kind == "restock":
            commands.append(RestockProduct(product_id=products[product], quantity=quantity))
        elif kind == "order":
            commands.append(
                CreateOrder(
                    order_id=order_id,
                    customer_id=customer,
                    items=[line],
                    shipping_address=_ADDRESS,
                    **meta,
                )
            )
        elif kind == "item":
            commands.append(AddOrderItem(order_id=order_id, item=line, **meta))
        elif kind == "ship":
            commands.append(ShipOrder(order_id=order_id, **meta))
        else:
            commands.append(CancelOrder(order_id=order_id, reason="r", **meta))
    return commands


async def _compare(
    backend: Backend, snapshotter: Snapshotter, cls: type[Aggregate], ids: list[UUID]
) -> int:
    used = 0
    for aggregate_id in map(str, ids):
        fast = await Repository(backend.store, snapshots=snapshotter).get(cls, aggregate_id)
        slow = await Repository(backend.store).get(cls, aggregate_id)
        if slow is None:
            assert fast is None
            continue
        assert fast is not None
        assert fast.version == slow.version
        assert fast.snapshot_state() == slow.snapshot_state()  # type: ignore[attr-defined]
        snapshot = await snapshotter.store.load(cls.stream_id_for(aggregate_id))
        if slow.version >= snapshotter.every:
            assert snapshot is not None
            assert snapshot.version == slow.version - slow.version % snapshotter.every
            used += 1
        else:
            assert snapshot is None
    return used


async def _run(url: str, steps: list[tuple[str, int, int, int]], every: int) -> int:
    backend = await open_backend(url, migrate=False)
    try:
        snapshotter = Snapshotter(snapshot_store_for(backend.store), every)
        bus = CommandBus(backend.store, [retry_on_conflict(3)], snapshots=snapshotter)
        register_command_handlers(bus)
        ns = uuid4()
        for command in _commands(steps, ns):
            # A rule may say no (insufficient stock, shipped): part of the sequence.
            with contextlib.suppress(CqrskitError):
                await bus.dispatch(command)
        products = [uuid5(ns, f"product-{n}") for n in range(2)]
        orders = [uuid5(ns, f"order-{n}") for n in range(3)]
        used = await _compare(backend, snapshotter, Product, products)
        return used + await _compare(backend, snapshotter, Order, orders)
    finally:
        await backend.close()


async def _migrate(url: str) -> None:
    backend = await open_backend(url)
    try:
        await snapshot_store_for(backend.store).migrate()
    finally:
        await backend.close()


def test_snapshot_plus_later_events_equals_full_replay(database_url: str) -> None:
    asyncio.run(_migrate(database_url))
    used: list[int] = []

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(_step, max_size=25), st.integers(min_value=1, max_value=4))
    def check(steps: list[tuple[str, int, int, int]], every: int) -> None:
        used.append(asyncio.run(_run(database_url, steps, every)))

    check()
    assert sum(used) > 0  # snapshots were really taken and loaded


async def _tamper(url: str, statement: str) -> None:
    backend = await open_backend(url, migrate=False)
    try:
        if url.startswith("sqlite"):
            db: Any = backend.store.db  # type: ignore[attr-defined]
            await db.write(lambda conn: conn.execute(statement))
        else:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()
    finally:
        await backend.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE snapshots SET state = '{\"name\": 1'",
        'UPDATE snapshots SET state = \'{"name": "P", "unit_price": "2.5", "stock": 1}\','
        " schema_version = 0",
        'UPDATE snapshots SET state = \'{"name": "P", "unit_price": "2.5", "stock": 1}\','
        " version = version + 100",
        "DELETE FROM events WHERE version > 1 AND stream_id LIKE 'product-%'",
    ],
    ids=["garbage", "old-schema", "ahead-of-log", "log-truncated"],
)
async def test_tampered_snapshot_is_ignored(database_url: str, statement: str) -> None:
    await _migrate(database_url)
    backend = await open_backend(database_url, migrate=False)
    product_id = uuid4()
    try:
        snapshotter = Snapshotter(snapshot_store_for(backend.store), 2)
        bus = CommandBus(backend.store, snapshots=snapshotter)
        register_command_handlers(bus)
        await bus.dispatch(
            AddProduct(product_id=product_id, name="P", unit_price=Decimal(1), stock=50)
        )
        for n in range(4):
            await bus.dispatch(RestockProduct(product_id=product_id, quantity=n + 1))
        assert await snapshotter.store.load(f"product-{product_id}") is not None
    finally:
        await backend.close()
    await _tamper(database_url, statement)
    backend = await open_backend(database_url, migrate=False)
    try:
        snapshotter = Snapshotter(snapshot_store_for(backend.store), 2)
        fast = await Repository(backend.store, snapshots=snapshotter).load(Product, str(product_id))
        slow = await Repository(backend.store).load(Product, str(product_id))
        assert (fast.version, fast.stock) == (slow.version, slow.stock)
        # The next save writes a fresh, usable snapshot over the bad one.
        bus = CommandBus(backend.store, snapshots=snapshotter)
        register_command_handlers(bus)
        await bus.dispatch(RestockProduct(product_id=product_id, quantity=1))
        await bus.dispatch(RestockProduct(product_id=product_id, quantity=1))
        again = await Repository(backend.store, snapshots=snapshotter).load(
            Product, str(product_id)
        )
        assert again.stock == slow.stock + 2
    finally:
        await backend.close()


async def test_snapshot_store_keeps_only_the_newest(database_url: str) -> None:
    await _migrate(database_url)
    backend = await open_backend(database_url, migrate=False)
    try:
        store = snapshot_store_for(backend.store)
        assert await store.load("thing-1") is None
        first = Snapshot("thing-1", 5, uuid4(), "thing", 1, '{"n": 5}')
        await store.save(first)
        await store.save(first._replace(version=3, state='{"n": 3}'))
        await store.save(first._replace(version=5, state='{"n": "again"}'))
        assert await store.load("thing-1") == first
        newer = Snapshot("thing-1", 8, uuid4(), "thing", 2, '{"n": "ünï\\"}"}')
        await store.save(newer)
        assert await store.load("thing-1") == newer
        assert await store.load("thing-2") is None
    finally:
        await backend.close()
