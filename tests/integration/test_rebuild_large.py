"""``cqrskit projections rebuild`` over a 100k-event SQLite log, as a real process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

from cqrskit.backend import open_backend
from cqrskit.messages import DomainEvent
from cqrskit.projections.generations import LiveReadModels
from cqrskit.read_models.protocol import sql
from cqrskit.store.protocol import NO_STREAM, StreamAppend
from orders.customer import CustomerRegistered
from orders.order import OrderCancelled, OrderCreated, OrderItemAdded, OrderShipped
from orders.product import ProductAdded
from orders.service import service
from orders.values import Address, OrderLine

TARGET_EVENTS = 100_000
ORDERS_PER_APPEND = 2_000
CUSTOMERS = 200
PRODUCTS = 50
START = datetime(2026, 1, 1, tzinfo=UTC)


def _id(kind: int, n: int) -> UUID:
    return UUID(int=(kind << 64) | n)


def _order_events(n: int, at: datetime) -> list[DomainEvent]:
    order_id = str(_id(3, n))
    line = OrderLine(
        product_id=_id(2, n % PRODUCTS), quantity=1 + n % 3, unit_price=Decimal("9.99")
    )
    address = Address(street=f"{n} Main St", city="Lyon", postal_code="69001", country="FR")
    events: list[DomainEvent] = [
        OrderCreated(
            order_id=order_id,
            customer_id=str(_id(1, n % CUSTOMERS)),
            items=[line],
            shipping_address=address,
            occurred_at=at,
        )
    ]
    if n % 5 == 0:
        extra = line.model_copy(update={"product_id": _id(2, (n + 1) % PRODUCTS)})
        events.append(OrderItemAdded(order_id=order_id, item=extra, occurred_at=at))
    if n % 3 == 0:
        events.append(OrderShipped(order_id=order_id, occurred_at=at))
    elif n % 10 == 1:
        events.append(OrderCancelled(order_id=order_id, reason="changed mind", occurred_at=at))
    return events


async def build_log(url: str) -> tuple[int, int]:
    """Append customers, products and orders in large multi-stream batches."""
    backend = await open_backend(url)
    try:
        store = backend.store
        reference = [
            StreamAppend(
                f"customer-{_id(1, n)}",
                NO_STREAM,
                [
                    CustomerRegistered(
                        customer_id=str(_id(1, n)),
                        name=f"Customer {n}",
                        email=f"c{n}@example.com",
                        occurred_at=START,
                    )
                ],
            )
            for n in range(CUSTOMERS)
        ] + [
            StreamAppend(
                f"product-{_id(2, n)}",
                NO_STREAM,
                [
                    ProductAdded(
                        product_id=str(_id(2, n)),
                        name=f"Product {n}",
                        unit_price=Decimal("9.99"),
                        stock=1_000_000,
                        occurred_at=START,
                    )
                ],
            )
            for n in range(PRODUCTS)
        ]
        await store.append(*reference)
        total, orders = len(reference), 0
        while total < TARGET_EVENTS:
            batch = []
            for _ in range(ORDERS_PER_APPEND):
                events = _order_events(orders, START + timedelta(seconds=orders))
                batch.append(StreamAppend(f"order-{_id(3, orders)}", NO_STREAM, events))
                total += len(events)
                orders += 1
                if total >= TARGET_EVENTS:
                    break
            await store.append(*batch)
        return total, orders
    finally:
        await backend.close()


async def order_rows(url: str) -> int:
    backend = await open_backend(url, migrate=False)
    # The rebuild built a new generation of the tables; read the live one.
    read_models = LiveReadModels.wrap(backend.read_models, service.projections())
    try:
        row = await read_models.fetchone(sql("SELECT count(*) AS n FROM order_detail_orders"))
        assert row is not None
        return int(row["n"])
    finally:
        await backend.close()


@pytest.mark.slow
def test_rebuild_of_100k_events_applies_every_event(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/large.db"
    started = time.perf_counter()
    total, orders = asyncio.run(build_log(url))
    built = time.perf_counter() - started
    assert total >= TARGET_EVENTS

    command = [sys.executable, "-m", "cqrskit.cli"]
    started = time.perf_counter()
    result = subprocess.run(
        [*command, "projections", "rebuild", "order_detail", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    rebuilt = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "events/s" in result.stdout
    applied = re.search(r"rebuilt order_detail: ([\d,]+) events", result.stdout)
    assert applied is not None, result.stdout
    assert int(applied.group(1).replace(",", "")) == total
    assert f"{total}/{total}" in result.stdout

    state = subprocess.run(
        [*command, "projections", "status", "--json", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    detail = next(row for row in json.loads(state.stdout) if row["name"] == "order_detail")
    assert detail["lag_events"] == 0
    assert detail["position"] == detail["head"]
    assert asyncio.run(order_rows(url)) == orders
    print(  # the measurement the docs quote; visible with pytest -s
        f"\n{total:,} events ({orders:,} orders) appended in {built:.1f} s;"
        f" rebuild of order_detail took {rebuilt:.1f} s ({total / rebuilt:,.0f} events/s"
        " including process start)"
    )
