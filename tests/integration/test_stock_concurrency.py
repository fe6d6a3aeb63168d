"""Stock is never oversold: many concurrent orders race for ten units.

Each order and the stock reservation it makes commit in one atomic append guarded by the
product stream's version; a loser is retried by ``retry_on_conflict`` and then sees the stock
that is left. The events themselves are the proof: the product stream's running stock never
goes below zero and every reservation belongs to an order that exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus, CommandResult
from cqrskit.errors import ConcurrencyError
from cqrskit.messages import LOG_START
from cqrskit.middleware import retry_on_conflict
from cqrskit.testing.contracts import wait_until_readable
from orders.customer import RegisterCustomer
from orders.handlers import register_command_handlers
from orders.order import CreateOrder, OrderCreated
from orders.product import AddProduct, InsufficientStock, ProductAdded, StockReserved
from orders.values import Address, OrderLine

ROOT = Path(__file__).resolve().parents[2]
STOCK = 10
# A racer only loses a round when another order reserved a unit, which happens at most STOCK
# times; with more attempts than that no order can fail for lack of retries.
ATTEMPTS = STOCK + 5
ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")


def make_bus(backend: Backend) -> CommandBus:
    bus = CommandBus(backend.store, [retry_on_conflict(ATTEMPTS)])
    register_command_handlers(bus)
    return bus


async def seed(bus: CommandBus) -> tuple[UUID, UUID]:
    customer_id, product_id = uuid4(), uuid4()
    await bus.dispatch(RegisterCustomer(customer_id=customer_id, name="Ada", email="a@b.io"))
    await bus.dispatch(
        AddProduct(product_id=product_id, name="Last", unit_price=Decimal("19.99"), stock=STOCK)
    )
    return customer_id, product_id


def order(customer_id: UUID, product_id: UUID) -> CreateOrder:
    line = OrderLine(product_id=product_id, quantity=1, unit_price=Decimal("19.99"))
    return CreateOrder(
        order_id=uuid4(), customer_id=customer_id, items=[line], shipping_address=ADDRESS
    )


async def assert_no_oversell(
    backend: Backend, product_id: UUID, succeeded: Sequence[UUID], failed: Sequence[UUID]
) -> None:
    """Check the stored events against the outcomes the callers saw."""
    product_events = await backend.store.read_stream(f"product-{product_id}")
    assert isinstance(product_events[0], ProductAdded)
    stock = product_events[0].stock
    reserved_for: list[str] = []
    for event in product_events[1:]:
        assert isinstance(event, StockReserved)
        stock -= event.quantity
        assert stock >= 0, "oversold"
        reserved_for.append(event.order_id)
    assert stock == 0
    assert sum(e.quantity for e in product_events[1:] if isinstance(e, StockReserved)) == STOCK
    assert sorted(reserved_for) == sorted(str(o) for o in succeeded)
    for order_id in succeeded:
        (created,) = await backend.store.read_stream(f"order-{order_id}")
        assert isinstance(created, OrderCreated)
    for order_id in failed:
        assert await backend.store.read_stream(f"order-{order_id}") == []
    log = await backend.store.read_all(after=LOG_START, limit=100_000)
    created_orders = {r.event.stream_id for r in log if isinstance(r.event, OrderCreated)}
    assert created_orders == {f"order-{o}" for o in succeeded}


async def test_concurrent_orders_cannot_oversell(database_url: str) -> None:
    backend = await open_backend(database_url)
    try:
        bus = make_bus(backend)
        customer_id, product_id = await seed(bus)
        commands = [order(customer_id, product_id) for _ in range(50)]
        outcomes = await asyncio.gather(
            *(bus.dispatch(c) for c in commands), return_exceptions=True
        )
        succeeded = [c.order_id for c, o in zip(commands, outcomes, strict=True) if not _err(o)]
        failed = [c.order_id for c, o in zip(commands, outcomes, strict=True) if _err(o)]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        positions = [o.position for o in outcomes if isinstance(o, CommandResult) and o.position]
        await wait_until_readable(backend.store, max(positions))
        assert all(isinstance(e, InsufficientStock | ConcurrencyError) for e in errors), errors
        assert len(succeeded) == STOCK
        assert sum(isinstance(e, InsufficientStock) for e in errors) == 50 - STOCK
        await assert_no_oversell(backend, product_id, succeeded, failed)
    finally:
        await backend.close()


def _err(outcome: object) -> bool:
    return isinstance(outcome, BaseException)


_ORDERING_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys
    from uuid import UUID
    from cqrskit.backend import open_backend
    from tests.integration.test_stock_concurrency import make_bus, order

    async def main() -> None:
        backend = await open_backend(sys.argv[1])
        bus = make_bus(backend)
        commands = [order(UUID(sys.argv[2]), UUID(sys.argv[3])) for _ in range(int(sys.argv[4]))]
        dispatches = (bus.dispatch(c) for c in commands)
        outcomes = await asyncio.gather(*dispatches, return_exceptions=True)
        await backend.close()
        print(json.dumps([
            [str(c.order_id), type(o).__name__ if isinstance(o, BaseException) else "ok"]
            for c, o in zip(commands, outcomes)
        ]))

    asyncio.run(main())
    """
)


async def test_two_processes_ordering_against_one_sqlite_file_cannot_oversell(
    sqlite_url: str,
) -> None:
    backend = await open_backend(sqlite_url)
    try:
        customer_id, product_id = await seed(make_bus(backend))
    finally:
        await backend.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    args = [sqlite_url, str(customer_id), str(product_id), "15"]
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _ORDERING_PROCESS,
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = await asyncio.wait_for(
        asyncio.gather(*(p.communicate() for p in processes)), timeout=120
    )
    outcomes: list[tuple[UUID, str]] = []
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err.decode()
        outcomes.extend((UUID(o), kind) for o, kind in json.loads(out))
    assert {kind for _, kind in outcomes} <= {"ok", "InsufficientStock"}
    succeeded = [o for o, kind in outcomes if kind == "ok"]
    failed = [o for o, kind in outcomes if kind != "ok"]
    assert len(succeeded) == STOCK
    backend = await open_backend(sqlite_url)
    try:
        await assert_no_oversell(backend, product_id, succeeded, failed)
    finally:
        await backend.close()
