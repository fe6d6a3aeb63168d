"""Customer orders: one summary row per order, listed per customer, newest first.

Serves :class:`~orders.queries.GetOrdersByCustomer`. Customer names come from this
projection's own ``customer_orders_customers`` lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from orders.customer import CustomerRegistered
from orders.order import OrderCancelled, OrderCreated, OrderItemAdded, OrderShipped
from orders.queries import GetOrdersByCustomer, OrderSummaryPage
from orders.read_models._common import (
    CANCELLED,
    PENDING,
    SHIPPED,
    lines_total,
    summary_view,
    timestamp,
)

__all__ = ["CustomerOrdersProjection", "orders_by_customer"]

_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS customer_orders_customers ("
        " customer_id TEXT PRIMARY KEY, name TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS customer_orders_orders ("
        " order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT NOT NULL,"
        " status TEXT NOT NULL, total_cents BIGINT NOT NULL, item_count BIGINT NOT NULL,"
        " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS customer_orders_by_customer"
        " ON customer_orders_orders (customer_id, created_at, order_id)"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS customer_orders_by_customer_status"
        " ON customer_orders_orders (customer_id, status, created_at, order_id)"
    ),
)
_TRUNCATE = (
    sql("DELETE FROM customer_orders_orders"),
    sql("DELETE FROM customer_orders_customers"),
)

PUT_CUSTOMER = sql(
    "INSERT INTO customer_orders_customers (customer_id, name) VALUES ($1, $2)"
    " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name",
    keys={"customer": 1},
)
CREATE_ORDER = sql(
    "INSERT INTO customer_orders_orders (order_id, customer_id, customer_name, status,"
    " total_cents, item_count, created_at, updated_at) VALUES ($1, $2,"
    " COALESCE((SELECT name FROM customer_orders_customers WHERE customer_id = $2), ''),"
    " $3, $4, $5, $6, $6) ON CONFLICT (order_id) DO NOTHING",
    keys={"order": 1, "customer": 2},
)
ADD_TO_TOTAL = sql(
    "UPDATE customer_orders_orders SET total_cents = total_cents + $2,"
    " item_count = item_count + 1, updated_at = $3 WHERE order_id = $1",
    keys={"order": 1},
)
SET_STATUS = sql(
    "UPDATE customer_orders_orders SET status = $2, updated_at = $3 WHERE order_id = $1",
    keys={"order": 1},
)

_COLUMNS = (
    "order_id, customer_id, customer_name, status, total_cents, item_count, created_at, updated_at"
)
# A NULL status parameter means "any status".
_FILTER = " WHERE customer_id = $1 AND (CAST($2 AS TEXT) IS NULL OR status = $2)"
_PAGE = sql(
    f"SELECT {_COLUMNS} FROM customer_orders_orders{_FILTER}"  # noqa: S608 - constant text
    " ORDER BY created_at DESC, order_id DESC LIMIT $3 OFFSET $4"
)
_COUNT = sql(
    f"SELECT COUNT(*) AS total FROM customer_orders_orders{_FILTER}"  # noqa: S608 - constant
)


class CustomerOrdersProjection(Projection):
    """Per-order summaries, indexed by customer and creation time."""

    name = "customer_orders"
    version = 1
    staged_rebuild = True  # both dialects build the same rows (test_staged_rebuild.py)
    tables = (
        "customer_orders_customers",
        "customer_orders_orders",
    )
    indexes = (
        "customer_orders_by_customer",
        "customer_orders_by_customer_status",
    )
    schema = _SCHEMA
    truncate = _TRUNCATE

    @on(CustomerRegistered)
    def _customer(self, event: CustomerRegistered) -> Iterator[Statement]:
        yield PUT_CUSTOMER(event.customer_id, event.name)

    @on(OrderCreated)
    def _created(self, event: OrderCreated) -> Iterator[Statement]:
        yield CREATE_ORDER(
            event.order_id,
            event.customer_id,
            PENDING,
            lines_total(event.items),
            len(event.items),
            timestamp(event.occurred_at),
        )

    @on(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> Iterator[Statement]:
        yield ADD_TO_TOTAL(event.order_id, lines_total([event.item]), timestamp(event.occurred_at))

    @on(OrderShipped)
    def _shipped(self, event: OrderShipped) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, SHIPPED, timestamp(event.occurred_at))

    @on(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, CANCELLED, timestamp(event.occurred_at))


def orders_by_customer(
    read_models: ReadModelStore,
) -> Callable[[GetOrdersByCustomer], Awaitable[OrderSummaryPage]]:
    """Return the handler of :class:`GetOrdersByCustomer`."""

    async def handle(query: GetOrdersByCustomer) -> OrderSummaryPage:
        customer_id = str(query.customer_id)
        status = None if query.status is None else query.status.value
        offset = (query.page - 1) * query.page_size
        rows = await read_models.fetch(_PAGE, customer_id, status, query.page_size, offset)
        counted = await read_models.fetchone(_COUNT, customer_id, status)
        return OrderSummaryPage(
            items=[summary_view(row) for row in rows],
            total=int(counted["total"]) if counted else 0,
            page=query.page,
            page_size=query.page_size,
        )

    return handle
