"""Customer summary: per-customer order counts, spending, first and last order times.

Serves :class:`~orders.queries.GetCustomerSummary`. Counters are kept up to date by SQL
arithmetic; ``customer_summary_orders`` maps each order to its customer, status and total, so
that shipping and cancelling (whose events name only the order) update the right customer.
Only a pending order can ship or be cancelled, so those statements find the customer through
the order's pending row: applying one twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from uuid import UUID

from cqrskit.errors import NotFound
from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from orders.customer import CustomerRegistered
from orders.order import OrderCancelled, OrderCreated, OrderItemAdded, OrderShipped
from orders.queries import CustomerSummary, GetCustomerSummary
from orders.read_models._common import (
    CANCELLED,
    PENDING,
    SHIPPED,
    from_cents,
    from_timestamp,
    lines_total,
    timestamp,
)

__all__ = ["CustomerSummaryProjection", "summary_of_customer"]

_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS customer_summary_customers ("
        " customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,"
        " total_orders BIGINT NOT NULL, spent_cents BIGINT NOT NULL,"
        " pending_orders BIGINT NOT NULL, shipped_orders BIGINT NOT NULL,"
        " cancelled_orders BIGINT NOT NULL, first_order_at TEXT, last_order_at TEXT)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS customer_summary_orders ("
        " order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL,"
        " total_cents BIGINT NOT NULL)"
    ),
)
_TRUNCATE = (
    sql("DELETE FROM customer_summary_orders"),
    sql("DELETE FROM customer_summary_customers"),
)

PUT_CUSTOMER = sql(
    "INSERT INTO customer_summary_customers (customer_id, name, email, total_orders,"
    " spent_cents, pending_orders, shipped_orders, cancelled_orders) VALUES"
    " ($1, $2, $3, 0, 0, 0, 0, 0)"
    " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, email = excluded.email",
    keys={"customer": 1},
)
CREATE_ORDER = sql(
    "INSERT INTO customer_summary_orders (order_id, customer_id, status, total_cents)"
    " VALUES ($1, $2, $3, $4) ON CONFLICT (order_id) DO NOTHING",
    keys={"order": 1, "customer": 2},
)
COUNT_ORDER = sql(
    "UPDATE customer_summary_customers SET total_orders = total_orders + 1,"
    " pending_orders = pending_orders + 1, spent_cents = spent_cents + $2,"
    " first_order_at = CASE WHEN first_order_at IS NULL OR first_order_at > $3"
    " THEN $3 ELSE first_order_at END,"
    " last_order_at = CASE WHEN last_order_at IS NULL OR last_order_at < $3"
    " THEN $3 ELSE last_order_at END"
    " WHERE customer_id = $1",
    keys={"customer": 1},
)
# The per-customer counters below are reached through the order's row, so those statements
# carry only the order key: they add to counters (and take the min/max of dates), which gives
# the same sums in any order, and the customer's row exists before them because CREATE_ORDER
# shares the customer key with PUT_CUSTOMER and comes first in each order's key.
ADD_SPENT = sql(
    "UPDATE customer_summary_customers SET spent_cents = spent_cents + $3"
    " WHERE customer_id = (SELECT customer_id FROM customer_summary_orders"
    " WHERE order_id = $1 AND status = $2)",
    keys={"order": 1},
)
ADD_TO_TOTAL = sql(
    "UPDATE customer_summary_orders SET total_cents = total_cents + $3"
    " WHERE order_id = $1 AND status = $2",
    keys={"order": 1},
)
COUNT_SHIPPED = sql(
    "UPDATE customer_summary_customers SET pending_orders = pending_orders - 1,"
    " shipped_orders = shipped_orders + 1"
    " WHERE customer_id = (SELECT customer_id FROM customer_summary_orders"
    " WHERE order_id = $1 AND status = $2)",
    keys={"order": 1},
)
COUNT_CANCELLED = sql(
    "UPDATE customer_summary_customers SET pending_orders = pending_orders - 1,"
    " cancelled_orders = cancelled_orders + 1, spent_cents = spent_cents"
    " - (SELECT total_cents FROM customer_summary_orders WHERE order_id = $1)"
    " WHERE customer_id = (SELECT customer_id FROM customer_summary_orders"
    " WHERE order_id = $1 AND status = $2)",
    keys={"order": 1},
)
SET_STATUS = sql(
    "UPDATE customer_summary_orders SET status = $3 WHERE order_id = $1 AND status = $2",
    keys={"order": 1},
)

_GET = sql(
    "SELECT customer_id, name, email, total_orders, spent_cents, pending_orders,"
    " shipped_orders, cancelled_orders, first_order_at, last_order_at"
    " FROM customer_summary_customers WHERE customer_id = $1"
)


class CustomerSummaryProjection(Projection):
    """One row of order figures per registered customer."""

    name = "customer_summary"
    version = 1
    staged_rebuild = True  # both dialects build the same rows (test_staged_rebuild.py)
    tables = (
        "customer_summary_customers",
        "customer_summary_orders",
    )
    schema = _SCHEMA
    truncate = _TRUNCATE

    @on(CustomerRegistered)
    def _customer(self, event: CustomerRegistered) -> Iterator[Statement]:
        yield PUT_CUSTOMER(event.customer_id, event.name, event.email)

    @on(OrderCreated)
    def _created(self, event: OrderCreated) -> Iterator[Statement]:
        total = lines_total(event.items)
        yield CREATE_ORDER(event.order_id, event.customer_id, PENDING, total)
        yield COUNT_ORDER(event.customer_id, total, timestamp(event.occurred_at))

    @on(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> Iterator[Statement]:
        amount = lines_total([event.item])
        yield ADD_SPENT(event.order_id, PENDING, amount)
        yield ADD_TO_TOTAL(event.order_id, PENDING, amount)

    @on(OrderShipped)
    def _shipped(self, event: OrderShipped) -> Iterator[Statement]:
        yield COUNT_SHIPPED(event.order_id, PENDING)
        yield SET_STATUS(event.order_id, PENDING, SHIPPED)

    @on(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> Iterator[Statement]:
        yield COUNT_CANCELLED(event.order_id, PENDING)
        yield SET_STATUS(event.order_id, PENDING, CANCELLED)


def summary_of_customer(
    read_models: ReadModelStore,
) -> Callable[[GetCustomerSummary], Awaitable[CustomerSummary]]:
    """Return the handler of :class:`GetCustomerSummary` (``NotFound`` for an unknown id)."""

    async def handle(query: GetCustomerSummary) -> CustomerSummary:
        row = await read_models.fetchone(_GET, str(query.customer_id))
        if row is None:
            raise NotFound("customer", str(query.customer_id))
        return CustomerSummary(
            customer_id=UUID(row["customer_id"]),
            name=row["name"],
            email=row["email"],
            total_orders=int(row["total_orders"]),
            total_spent=from_cents(row["spent_cents"]),
            orders_by_status={
                PENDING: int(row["pending_orders"]),
                SHIPPED: int(row["shipped_orders"]),
                CANCELLED: int(row["cancelled_orders"]),
            },
            first_order_at=from_timestamp(row["first_order_at"]),
            last_order_at=from_timestamp(row["last_order_at"]),
        )

    return handle
