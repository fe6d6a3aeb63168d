"""The orders projections' keys are honest: grouped batches build the same rows as single events.

Each projection is built twice from one interleaved log on both backends: once one event per
batch (nothing can be reordered) and once in batches of 50 events, whose statements the
read-model store groups by text as far as their keys allow. The tables must be identical.
Batches of 50 start in the middle of the log, so a batch can create orders before it
registers a customer who then orders too: dropping the customer key from ``customer_orders``'
CREATE_ORDER, or the product key from ``order_detail``'s APPEND_LINE, fails this test.
The log interleaves many orders of shared customers and products, registers customers and
adds products between orders, and updates addresses, adds items, ships and cancels in random
order, so a statement moved across one it depends on would show in the rows.
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from cqrskit.backend import open_backend
from cqrskit.messages import LOG_START, utc_now
from cqrskit.projections.projection import Projection, physical_name
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.batching import plan
from cqrskit.store.protocol import EventStore, StreamAppend
from orders.customer import Customer
from orders.order import Order
from orders.product import Product
from orders.read_models import projections
from orders.values import Address, OrderLine
from tests.reliability.history import table_digests

pytestmark = pytest.mark.asyncio


def _address(rng: random.Random) -> Address:
    return Address(
        street=f"{rng.randint(1, 99)} Long Street",
        city=rng.choice(["Utrecht", "Gent", "Lyon"]),
        postal_code=f"{rng.randint(1000, 9999)}",
        country="NL",
    )


async def _interleaved_log(store: EventStore, seed: int, steps: int = 600) -> int:
    """Append a random interleaving of customer, product and order events; return the count."""
    rng = random.Random(seed)
    at = utc_now() - timedelta(days=1)
    customers: list[str] = []
    products: list[str] = []
    pending: dict[str, Order] = {}
    events = 0
    for step in range(steps):
        at += timedelta(seconds=rng.randint(1, 90))
        action = rng.random()
        aggregate: Customer | Product | Order
        if not customers or action < 0.06:
            aggregate = Customer.register(
                str(uuid.UUID(int=rng.getrandbits(128))),
                f"Customer {step}",
                f"c{step}@x.org",
                at=at,
            )
            customers.append(aggregate.id)
        elif len(products) < 2 or action < 0.12:
            aggregate = Product.add(
                str(uuid.UUID(int=rng.getrandbits(128))),
                f"Product {step}",
                Decimal(rng.randint(100, 9999)) / 100,
                1000,
                at=at,
            )
            products.append(aggregate.id)
        elif not pending or action < 0.4:
            lines = [
                OrderLine(
                    product_id=uuid.UUID(rng.choice(products)),
                    quantity=rng.randint(1, 3),
                    unit_price=Decimal(rng.randint(100, 5000)) / 100,
                )
                for _ in range(rng.randint(1, 3))
            ]
            aggregate = Order.create(
                str(uuid.UUID(int=rng.getrandbits(128))),
                rng.choice(customers),
                lines,
                _address(rng),
                at=at,
            )
            pending[aggregate.id] = aggregate
        else:
            aggregate = pending[rng.choice(sorted(pending))]
            kind = rng.random()
            if kind < 0.5:
                line = OrderLine(
                    product_id=uuid.UUID(rng.choice(products)), quantity=1, unit_price=Decimal(3)
                )
                aggregate.add_item(line, at=at)
            elif kind < 0.7:
                aggregate.update_shipping_address(_address(rng), at=at)
            elif kind < 0.9:
                aggregate.ship(at=at)
                del pending[aggregate.id]
            else:
                aggregate.cancel("changed their mind", at=at)
                del pending[aggregate.id]
        new = aggregate.pending_events
        await store.append(StreamAppend(aggregate.stream_id, aggregate.loaded_version, new))
        aggregate.mark_saved()
        events += len(new)
    return events


async def _build(url: str, projection: Projection, generation: int, batch: int) -> list[str]:
    backend = await open_backend(url)
    try:
        runner = ProjectionRunner(
            backend.store,
            backend.read_models,
            projection,
            batch_size=batch,
            checkpoint_name=f"{projection.name}@batch{batch}",
            generation=generation,
            max_retries=0,
            on_failure="stop",
        )
        await runner.migrate()
        await runner.catch_up()
        tables = [physical_name(t, generation) for t in projection.tables]
        return await table_digests(backend.read_models, tables)
    finally:
        await backend.close()


async def test_grouped_batches_build_the_same_read_models(database_url: str) -> None:
    backend = await open_backend(database_url)
    try:
        events = await _interleaved_log(backend.store, seed=7)
        page = await backend.store.read_all(after=LOG_START, limit=1000)
    finally:
        await backend.close()
    assert events == len(page) == 600
    grouped_somewhere = False
    for number, projection in enumerate(projections()):
        one_by_one = await _build(database_url, projection, 100 + 2 * number, batch=1)
        grouped = await _build(database_url, projection, 101 + 2 * number, batch=50)
        assert grouped == one_by_one, projection.name
        assert all(not digest.startswith("0:") for digest in one_by_one if digest != "absent")
        statements = [s for record in page for s in projection.apply(record.event)]
        consecutive = sum(
            1 for i, s in enumerate(statements) if i == 0 or statements[i - 1].sql != s.sql
        )
        grouped_somewhere |= len(plan(statements, lambda s: s.sql.postgres)) < consecutive / 4
    assert grouped_somewhere  # the comparison above really exercised reordering
