"""A projection rebuilt from zero holds exactly what it built live, batch by batch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from cqrskit.config import Settings
from cqrskit.errors import CommandRejected
from cqrskit.messages import LOG_START, Command, LogPosition
from cqrskit.read_models.protocol import ReadModelStore, sql
from cqrskit.read_models.sqlite import SQLiteReadModelStore
from cqrskit.service import Runtime
from orders.customer import RegisterCustomer
from orders.order import (
    AddOrderItem,
    CancelOrder,
    CreateOrder,
    ShipOrder,
    UpdateShippingAddress,
)
from orders.product import AddProduct, RestockProduct
from orders.queries import OrderSummaryPage, SearchOrders
from orders.service import service
from orders.values import Address, OrderLine

WORDS = ["red", "blue", "pen", "paper", "lamp", "chili", "book", "ink", "desk", "mug"]
NAMES = ["Ada Byron", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov"]
ZONES = [UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=2))]

Dump = dict[str, list[str]]


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(service, Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()


class Traffic:
    """Random but valid-looking commands; some are refused by the domain, as in real life."""

    def __init__(self, runtime: Runtime, rng: random.Random) -> None:
        self.runtime = runtime
        self.rng = rng
        self.now = datetime(2024, 1, 1, tzinfo=UTC)
        self.customers: list[UUID] = []
        self.products: dict[UUID, Decimal] = {}
        self.orders: list[UUID] = []
        self.last = LOG_START
        self.sent = 0
        self.refused = 0

    def _at(self) -> datetime:
        self.now += timedelta(
            seconds=self.rng.randint(0, 4000), microseconds=self.rng.randint(0, 999)
        )
        return self.now.astimezone(self.rng.choice(ZONES))

    def _address(self) -> Address:
        n = self.rng.randint(1, 999)
        return Address(street=f"{n} Main St", city="Springfield", postal_code=str(n), country="US")

    def _line(self) -> OrderLine:
        product_id = self.rng.choice(list(self.products))
        return OrderLine(
            product_id=product_id,
            quantity=self.rng.randint(1, 4),
            unit_price=self.products[product_id],
        )

    def _register(self) -> Command:
        customer_id = uuid4()
        self.customers.append(customer_id)
        name = self.rng.choice(NAMES)
        email = f"{name.split()[0].lower()}{len(self.customers)}@example.com"
        return RegisterCustomer(
            customer_id=customer_id, name=name, email=email, timestamp=self._at()
        )

    def _add_product(self) -> Command:
        product_id = uuid4()
        price = Decimal(self.rng.choice([1, 10, 99, 1999, 250_000])) / 100
        self.products[product_id] = price
        name = " ".join(self.rng.sample(WORDS, 2)).title()
        stock = self.rng.randint(0, 60)
        return AddProduct(
            product_id=product_id, name=name, unit_price=price, stock=stock, timestamp=self._at()
        )

    def _next(self) -> Command:
        rng = self.rng
        if len(self.customers) < 3 or rng.random() < 0.05:
            return self._register()
        if len(self.products) < 4 or rng.random() < 0.05:
            return self._add_product()
        choice = rng.random()
        if choice < 0.4 or not self.orders:
            return CreateOrder(
                order_id=uuid4(),
                customer_id=rng.choice(self.customers),
                items=[self._line() for _ in range(rng.randint(1, 4))],
                shipping_address=self._address(),
                timestamp=self._at(),
            )
        order_id = rng.choice(self.orders)
        if choice < 0.55:
            return AddOrderItem(order_id=order_id, item=self._line(), timestamp=self._at())
        if choice < 0.65:
            return UpdateShippingAddress(
                order_id=order_id, shipping_address=self._address(), timestamp=self._at()
            )
        if choice < 0.77:
            return ShipOrder(order_id=order_id, timestamp=self._at())
        if choice < 0.89:
            return CancelOrder(order_id=order_id, reason="changed my mind", timestamp=self._at())
        return RestockProduct(
            product_id=rng.choice(list(self.products)),
            quantity=rng.randint(1, 20),
            timestamp=self._at(),
        )

    async def send_one(self) -> None:
        command = self._next()
        try:
            result = await self.runtime.command_bus.dispatch(command)
        except CommandRejected:
            self.refused += 1
            return
        self.sent += 1
        if isinstance(command, CreateOrder):
            self.orders.append(command.order_id)
        if result.position is not None:
            self.last = max(self.last, result.position)


async def settle(runtime: Runtime, position: LogPosition, timeout: float = 60.0) -> None:
    """Catch every projection up to ``position`` (PostgreSQL's xid fence may delay a read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for runner in runtime.runners.values():
        while (checkpoint := await runner.catch_up()) < position:
            assert loop.time() < deadline, f"{runner.name} stuck at {checkpoint}"
            await runtime.backend.store.wait_for_events(checkpoint, 0.05)


_SQLITE_TABLES = sql(
    "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
)
_POSTGRES_TABLES = sql(
    "SELECT table_name AS name FROM information_schema.tables"
    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
)


async def dump(read_models: ReadModelStore, projection: str) -> Dump:
    """Every row of every table the projection owns, canonically rendered and sorted."""
    listing = _SQLITE_TABLES if read_models.dialect == "sqlite" else _POSTGRES_TABLES
    tables = sorted(
        row["name"]
        for row in await read_models.fetch(listing)
        if row["name"].startswith(projection + "_") and "_fts" not in row["name"]
    )
    assert tables, f"{projection} owns no tables"
    out: Dump = {}
    for table in tables:
        # Table names come from the catalog, filtered by our own prefix; no value is spliced.
        query = sql(
            f"SELECT to_jsonb(t)::text AS row FROM {table} t",  # noqa: S608 - catalog name
            sqlite=f"SELECT * FROM {table}",  # noqa: S608 - catalog name
        )
        rows = await read_models.fetch(query)
        out[table] = sorted(repr(sorted(row.items())) for row in rows)
    return out


async def dump_all(runtime: Runtime) -> dict[str, Dump]:
    return {name: await dump(runtime.backend.read_models, name) for name in runtime.runners}


async def searches(runtime: Runtime) -> dict[str, list[UUID]]:
    out = {}
    for q in [*WORDS, "ada", "example", "turing hopper", "b"]:
        page = await runtime.query_bus.dispatch(
            SearchOrders(q=q, page_size=100, sort_by="total_amount"), OrderSummaryPage
        )
        out[q] = [o.id for o in page.items]
    return out


async def check_fts_index(runtime: Runtime) -> None:
    read_models = runtime.backend.read_models
    if isinstance(read_models, SQLiteReadModelStore):
        # FTS5 compares its index with the content table and raises on any difference.
        await read_models.db.write(
            lambda conn: conn.execute(
                "INSERT INTO order_search_fts (order_search_fts) VALUES ('integrity-check')"
            )
        )


async def test_rebuild_from_zero_equals_live_projection(runtime: Runtime) -> None:
    rng = random.Random(20240301)
    traffic = Traffic(runtime, rng)
    read_models = runtime.backend.read_models
    runners = list(runtime.runners.values())
    while traffic.sent < 300:
        await traffic.send_one()
        if rng.random() < 0.15:
            runner = rng.choice(runners)
            if rng.random() < 0.5:
                await runner.catch_up(limit=rng.randint(1, 40))
            else:
                checkpoint = await read_models.checkpoint(runner.name)
                await runner.step(checkpoint, rng.randint(1, 25))
    await settle(runtime, traffic.last)
    assert traffic.refused > 0
    live = await dump_all(runtime)
    live_searches = await searches(runtime)
    assert sum(len(ids) for ids in live_searches.values()) > 0
    await check_fts_index(runtime)

    for runner in runners:
        await runner.rebuild(batch_size=rng.choice([3, 17, 250, 5000]))
    await settle(runtime, traffic.last)

    assert await dump_all(runtime) == live
    assert await searches(runtime) == live_searches
    await check_fts_index(runtime)


async def test_catching_up_when_caught_up_changes_nothing(runtime: Runtime) -> None:
    traffic = Traffic(runtime, random.Random(7))
    for _ in range(60):
        await traffic.send_one()
    await settle(runtime, traffic.last)
    before = await dump_all(runtime)
    checkpoints = await runtime.backend.read_models.checkpoints()

    await runtime.catch_up()
    for runner in runtime.runners.values():
        assert await runner.step(await runtime.backend.read_models.checkpoint(runner.name)) == (
            await runtime.backend.read_models.checkpoint(runner.name)
        )

    assert await dump_all(runtime) == before
    assert [(c.name, c.position) for c in await runtime.backend.read_models.checkpoints()] == [
        (c.name, c.position) for c in checkpoints
    ]
