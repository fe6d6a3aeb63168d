"""An orders-domain event log for scenarios 5, 8 and 9, appended through the event store.

Each order is one stream of ``PER_ORDER`` events (``OrderCreated`` with one line, 8
``OrderItemAdded``, ``OrderShipped``) for one of ``CUSTOMERS`` registered customers; streams go
to the store in big multi-stream appends (about 2,000 events per append). The read model fed
by them is the orders service's ``customer_orders`` (``CustomerOrdersProjection``, one summary
row per order). :func:`raw_sql` and :attr:`OrdersLog.statements` give the statements that
projection makes, precomputed for the raw-driver references.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from cqrskit.messages import LOG_START, utc_now
from cqrskit.store.protocol import NO_STREAM, EventStore, StreamAppend
from orders.customer import Customer
from orders.order import Order
from orders.read_models._common import PENDING, SHIPPED, timestamp
from orders.values import Address, OrderLine

__all__ = [
    "CUSTOMERS",
    "PER_ORDER",
    "RAW_DDL",
    "READ",
    "OrdersLog",
    "copy_orders",
    "raw_sql",
    "read_rate",
    "seed_orders",
]

READ = "read + decode only"
"""The label of the ceiling reference: the log read through ``EventStore.read_all`` alone."""
CUSTOMERS = 100
PER_ORDER = 10
APPEND_STREAMS = 200
_ADDRESS = Address(street="1 Bench Street", city="Testville", postal_code="12345", country="NL")
_PRICE = Decimal("9.99")
_CENTS = 999

# The raw references write the same rows into copies of the projection's tables.
RAW_DDL = (
    "CREATE TABLE IF NOT EXISTS raw_co_customers (customer_id TEXT PRIMARY KEY, name TEXT NOT"
    " NULL)",
    "CREATE TABLE IF NOT EXISTS raw_co_orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT"
    " NULL, customer_name TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL,"
    " item_count BIGINT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS raw_co_by_customer ON raw_co_orders (customer_id, created_at,"
    " order_id)",
    "CREATE INDEX IF NOT EXISTS raw_co_by_customer_status ON raw_co_orders (customer_id, status,"
    " created_at, order_id)",
    "CREATE TABLE IF NOT EXISTS raw_checkpoint (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
)


def raw_sql(dialect: str) -> dict[str, str]:
    """The projection's statements on the raw tables, per kind, in ``dialect``."""
    from orders.read_models import customer_orders as co

    out = {}
    for kind, statement in (("customer", co.PUT_CUSTOMER), ("create", co.CREATE_ORDER),
                            ("add", co.ADD_TO_TOTAL), ("status", co.SET_STATUS)):  # fmt: skip
        text: str = getattr(statement, dialect)
        out[kind] = text.replace("customer_orders_customers", "raw_co_customers").replace(
            "customer_orders_orders", "raw_co_orders"
        )
    return out


class OrdersLog:
    """What was seeded: event count, order and customer ids, and the raw statements in order."""

    def __init__(self) -> None:
        self.events = 0
        self.customers: list[str] = []
        self.orders: list[str] = []
        # (kind, args) in log order; kind is a key of raw_sql().
        self.statements: list[tuple[str, tuple[Any, ...]]] = []


def _order(order_id: str, customer_id: str, at: datetime) -> Order:
    product = uuid.uuid4()
    line = OrderLine(product_id=product, quantity=1, unit_price=_PRICE)
    order = Order.create(order_id, customer_id, [line], _ADDRESS, at=at)
    for _ in range(PER_ORDER - 2):
        order.add_item(line, at=at)
    order.ship(at=at)
    return order


async def seed_orders(store: EventStore, n_events: int, *, keep: bool = True) -> OrdersLog:
    """Append about ``n_events`` orders-domain events; ``keep`` records the raw statements."""
    at = utc_now()
    ts = timestamp(at)
    log = OrdersLog()
    customers = []
    for i in range(CUSTOMERS):
        customer_id = str(uuid.uuid4())
        customer = Customer.register(customer_id, f"Customer {i}", f"c{i}@example.com", at=at)
        customers.append(StreamAppend(customer.stream_id, NO_STREAM, customer.pending_events))
        log.customers.append(customer_id)
        if keep:
            log.statements.append(("customer", (customer_id, f"Customer {i}")))
    await store.append(*customers)
    log.events = CUSTOMERS
    appends: list[StreamAppend] = []
    for n in range(max(0, n_events - CUSTOMERS) // PER_ORDER):
        order_id = str(uuid.uuid4())
        customer_id = log.customers[n % CUSTOMERS]
        order = _order(order_id, customer_id, at)
        appends.append(StreamAppend(order.stream_id, NO_STREAM, order.pending_events))
        log.orders.append(order_id)
        log.events += PER_ORDER
        if keep:
            log.statements.append(("create", (order_id, customer_id, PENDING, _CENTS, 1, ts)))
            log.statements.extend(("add", (order_id, _CENTS, ts)) for _ in range(PER_ORDER - 2))
            log.statements.append(("status", (order_id, SHIPPED, ts)))
        if len(appends) == APPEND_STREAMS:
            await store.append(*appends)
            appends = []
    if appends:
        await store.append(*appends)
    return log


_COPY_COLUMNS = ("event_id", "stream_id", "version", "event_type", "schema_version", "data",
                 "metadata", "occurred_at")  # fmt: skip
_COPY_CHUNK = 50_000


async def copy_orders(store: EventStore, url: str, n_events: int) -> OrdersLog:
    """Like :func:`seed_orders` on PostgreSQL, but the orders' rows go in by COPY.

    The customers are appended through the store; one template order is built through the
    aggregate and serialised by the store's mapper, and every order's rows are that template
    with its own ids (order, customer, product, event ids), COPY'd into ``events`` in chunks of
    50,000 rows (one transaction each). Raw statements are not recorded.
    """
    import asyncpg

    from cqrskit.store.mapper import serialize

    log = await seed_orders(store, CUSTOMERS, keep=False)
    at = utc_now()
    order_0, customer_0 = str(uuid.uuid4()), log.customers[0]
    template = _order(order_0, customer_0, at)
    product_0 = str(template.items[0].product_id)
    rows = [serialize(event) for event in template.pending_events]
    conn = await asyncpg.connect(url)
    try:
        chunk: list[tuple[Any, ...]] = []
        for n in range((n_events - CUSTOMERS) // PER_ORDER):
            order_id, customer_id, product = (
                str(uuid.uuid4()),
                log.customers[n % CUSTOMERS],
                str(uuid.uuid4()),
            )
            stream = f"{Order.category}-{order_id}"
            for version, row in enumerate(rows, start=1):
                data = (
                    row.data.replace(order_0, order_id)
                    .replace(customer_0, customer_id)
                    .replace(product_0, product)
                )
                chunk.append((uuid.uuid4(), stream, version, row.event_type, row.schema_version,
                              data, row.metadata, row.occurred_at))  # fmt: skip
            log.orders.append(order_id)
            log.events += PER_ORDER
            if len(chunk) >= _COPY_CHUNK:
                await conn.copy_records_to_table("events", records=chunk, columns=_COPY_COLUMNS)
                chunk = []
        if chunk:
            await conn.copy_records_to_table("events", records=chunk, columns=_COPY_COLUMNS)
    finally:
        await conn.close()
    return log


async def read_rate(store: EventStore, page: int) -> dict[str, float]:
    """Events/s of reading the whole log through ``store.read_all`` in pages, decoding each.

    The ceiling of anything that applies the log as typed events: what a catch-up or a
    rebuild would reach if applying cost nothing.
    """
    started = time.perf_counter()
    after, events = LOG_START, 0
    while batch := await store.read_all(after=after, limit=page):
        events += len(batch)
        after = batch[-1].position
    return {"rate": events / (time.perf_counter() - started)}
