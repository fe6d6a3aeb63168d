"""Snapshots on the in-memory stores: used when they fit the log, ignored otherwise."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from cqrskit.repository import Repository
from cqrskit.snapshots import MemorySnapshotStore, Snapshot, Snapshotter, snapshottable
from cqrskit.store.memory import MemoryEventStore
from orders.order import Order, OrderStatus
from orders.product import Product
from orders.values import Address, OrderLine

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class _FailingSnapshots(MemorySnapshotStore):
    async def load(self, stream_id: str) -> Snapshot | None:
        raise RuntimeError("snapshot table unavailable")

    async def save(self, snapshot: Snapshot) -> None:
        raise RuntimeError("snapshot table unavailable")


async def _product_history(store: MemoryEventStore, snapshots: Snapshotter, saves: int) -> str:
    product_id = str(uuid4())
    repo = Repository(store, snapshots=snapshots)
    repo.add(Product.add(product_id, "Lamp", Decimal("9.99"), 1000, at=AT))
    await repo.save()
    for n in range(saves):
        repo = Repository(store, snapshots=snapshots)
        product = await repo.load(Product, product_id)
        product.reserve(f"order-{n}", n + 1, at=AT)
        await repo.save()
    return product_id


async def _replayed(store: MemoryEventStore, product_id: str) -> Product:
    return await Repository(store).load(Product, product_id)


async def test_snapshot_is_written_when_a_save_crosses_the_interval() -> None:
    store, snaps = MemoryEventStore(), MemorySnapshotStore()
    product_id = await _product_history(store, Snapshotter(snaps, 3), 6)  # versions 1..7
    snapshot = snaps.snapshots[Product.stream_id_for(product_id)]
    assert snapshot.version == 6
    assert snapshot.aggregate_type == "product"
    assert snapshot.schema_version == Product.snapshot_version
    events = await store.read_stream(Product.stream_id_for(product_id))
    assert snapshot.event_id == events[5].event_id
    assert json.loads(snapshot.state)["stock"] == 1000 - sum(range(1, 6))


async def test_interval_zero_writes_no_snapshot() -> None:
    store, snaps = MemoryEventStore(), MemorySnapshotStore()
    await _product_history(store, Snapshotter(snaps, 0), 5)
    assert snaps.snapshots == {}


async def test_load_uses_the_snapshot_then_later_events() -> None:
    store, snaps = MemoryEventStore(), MemorySnapshotStore()
    snapshotter = Snapshotter(snaps, 3)
    product_id = await _product_history(store, snapshotter, 7)  # snapshot at 6, head 8
    stream_id = Product.stream_id_for(product_id)
    # A valid but different state proves the snapshot is what the load starts from.
    marked = snaps.snapshots[stream_id]
    state = json.loads(marked.state)
    snaps.snapshots[stream_id] = marked._replace(state=json.dumps({**state, "stock": 10_000}))
    loaded = await Repository(store, snapshots=snapshotter).load(Product, product_id)
    replayed = await _replayed(store, product_id)
    assert loaded.version == replayed.version == 8
    assert loaded.stock == 10_000 - 6 - 7  # versions 7 and 8 reserve 6 and 7
    assert replayed.stock == 1000 - sum(range(1, 8))


@pytest.mark.parametrize(
    "change",
    [
        {"schema_version": 0},
        {"schema_version": 2},
        {"aggregate_type": "order"},
        {"state": "{not json"},
        {"state": "[1, 2]"},
        {"state": json.dumps({"name": "Lamp", "unit_price": "x", "stock": 1})},
        {"state": json.dumps({"name": "Lamp"})},
        {"event_id": uuid4()},
        {"version": 99},
    ],
    ids=lambda c: next(iter(c)) + "=" + str(next(iter(c.values())))[:12],
)
async def test_unusable_snapshot_is_ignored_and_the_stream_replayed(
    change: dict[str, Any],
) -> None:
    store, snaps = MemoryEventStore(), MemorySnapshotStore()
    snapshotter = Snapshotter(snaps, 3)
    product_id = await _product_history(store, snapshotter, 4)
    stream_id = Product.stream_id_for(product_id)
    bogus = snaps.snapshots[stream_id]._replace(**change)
    snaps.snapshots[stream_id] = bogus._replace(
        state=bogus.state
        if "state" in change
        else json.dumps({"name": "X", "unit_price": "1", "stock": -5})
    )
    loaded = await Repository(store, snapshots=snapshotter).load(Product, product_id)
    replayed = await _replayed(store, product_id)
    assert (loaded.version, loaded.stock, loaded.name) == (
        replayed.version,
        replayed.stock,
        replayed.name,
    )


async def test_failing_snapshot_store_never_fails_a_command() -> None:
    store = MemoryEventStore()
    snapshotter = Snapshotter(_FailingSnapshots(), 2)
    product_id = await _product_history(store, snapshotter, 5)
    loaded = await Repository(store, snapshots=snapshotter).load(Product, product_id)
    assert loaded.stock == 1000 - sum(range(1, 6))


def test_order_state_round_trips() -> None:
    address = Address(street="1 Main St", city="Springfield", postal_code="123", country="US")
    line = OrderLine(product_id=uuid4(), quantity=2, unit_price=Decimal("3.50"))
    order = Order.create("o-1", "c-1", [line], address, at=AT)
    order.ship(at=AT)
    state = json.loads(json.dumps(order.snapshot_state()))
    restored = Order.from_snapshot("o-1", state)
    assert restored.items == order.items
    assert restored.shipping_address == address
    assert restored.status is OrderStatus.SHIPPED
    assert restored.total_amount == Decimal("7.00")
    assert snapshottable(Order)
    assert snapshottable(Product)


class _CountingSnapshots(MemorySnapshotStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, stream_id: str) -> Snapshot | None:
        self.loads += 1
        return await super().load(stream_id)


async def test_streams_known_to_be_short_skip_the_snapshot_lookup() -> None:
    store, snaps = MemoryEventStore(), _CountingSnapshots()
    snapshotter = Snapshotter(snaps, 5)
    product_id = await _product_history(store, snapshotter, 2)  # version 3 < 5
    before = snaps.loads
    await Repository(store, snapshots=snapshotter).load(Product, product_id)
    assert snaps.loads == before
    # Another process (its own snapshotter) grows the stream past the interval.
    elsewhere = Snapshotter(snaps, 5)
    for n in range(4):
        repo = Repository(store, snapshots=elsewhere)
        product = await repo.load(Product, product_id)
        product.reserve(f"later-{n}", 1, at=AT)
        await repo.save()
    assert snaps.snapshots[Product.stream_id_for(product_id)].version == 5
    # Here the stream is still known as short: a replay, still the right state.
    loaded = await Repository(store, snapshots=snapshotter).load(Product, product_id)
    assert (loaded.version, loaded.stock) == (7, 1000 - 1 - 2 - 4)
    # Now known as long: the next load looks the snapshot up.
    before = snaps.loads
    await Repository(store, snapshots=snapshotter).load(Product, product_id)
    assert snaps.loads == before + 1
