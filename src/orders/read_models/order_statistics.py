"""Order statistics: per-order and per-order-product rows, aggregated in SQL on demand.

Serves :class:`~orders.queries.GetOrderStatistics`. Amounts are integer cents, so sums over
any number of orders are exact. Each product row repeats its order's customer, status and
creation time, so that top products are one indexed ``GROUP BY`` without a join.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from itertools import product
from uuid import UUID

from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Sql, Statement, sql
from orders.order import OrderCancelled, OrderCreated, OrderItemAdded, OrderShipped
from orders.product import ProductAdded
from orders.queries import GetOrderStatistics, OrderStatistics, TopProduct
from orders.read_models._common import (
    CANCELLED,
    PENDING,
    SHIPPED,
    STATUSES,
    from_cents,
    lines_total,
    mean_money,
    timestamp,
)
from orders.values import OrderLine

__all__ = ["TOP_PRODUCTS", "OrderStatisticsProjection", "statistics_of_orders"]

TOP_PRODUCTS = 5

_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS order_statistics_products ("
        " product_id TEXT PRIMARY KEY, name TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_statistics_orders ("
        " order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL,"
        " total_cents BIGINT NOT NULL, created_at TEXT NOT NULL)"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS order_statistics_orders_by_created"
        " ON order_statistics_orders (created_at)"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS order_statistics_orders_by_customer"
        " ON order_statistics_orders (customer_id, created_at)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_statistics_lines ("
        " order_id TEXT NOT NULL, product_id TEXT NOT NULL, customer_id TEXT NOT NULL,"
        " status TEXT NOT NULL, created_at TEXT NOT NULL, quantity BIGINT NOT NULL,"
        " revenue_cents BIGINT NOT NULL, PRIMARY KEY (order_id, product_id))"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS order_statistics_lines_by_created"
        " ON order_statistics_lines (created_at)"
    ),
    sql(
        "CREATE INDEX IF NOT EXISTS order_statistics_lines_by_customer"
        " ON order_statistics_lines (customer_id, created_at)"
    ),
)
_TRUNCATE = (
    sql("DELETE FROM order_statistics_lines"),
    sql("DELETE FROM order_statistics_orders"),
    sql("DELETE FROM order_statistics_products"),
)

PUT_PRODUCT = sql(
    "INSERT INTO order_statistics_products (product_id, name) VALUES ($1, $2)"
    " ON CONFLICT (product_id) DO UPDATE SET name = excluded.name",
    keys={"product": 1},
)
CREATE_ORDER = sql(
    "INSERT INTO order_statistics_orders (order_id, customer_id, status, total_cents,"
    " created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_id) DO NOTHING",
    keys={"order": 1},
)
# Order lines of one product add up; the order's customer, status and date come from its row.
ADD_LINE = sql(
    "INSERT INTO order_statistics_lines (order_id, product_id, customer_id, status, created_at,"
    " quantity, revenue_cents) SELECT order_id, CAST($2 AS TEXT), customer_id, status,"
    " created_at, CAST($3 AS BIGINT), CAST($4 AS BIGINT)"
    " FROM order_statistics_orders WHERE order_id = $1"
    " ON CONFLICT (order_id, product_id) DO UPDATE SET"
    " quantity = order_statistics_lines.quantity + excluded.quantity,"
    " revenue_cents = order_statistics_lines.revenue_cents + excluded.revenue_cents",
    keys={"order": 1},
)
ADD_TO_TOTAL = sql(
    "UPDATE order_statistics_orders SET total_cents = total_cents + $2 WHERE order_id = $1",
    keys={"order": 1},
)
SET_STATUS = sql(
    "UPDATE order_statistics_orders SET status = $2 WHERE order_id = $1",
    keys={"order": 1},
)
SET_LINES_STATUS = sql(
    "UPDATE order_statistics_lines SET status = $2 WHERE order_id = $1",
    keys={"order": 1},
)

# Only the filters a query names appear in its SQL, so each can use its index; the texts are
# built once from these constants, for every combination of (customer, from, to).
_CONDITIONS = ("customer_id = ${}", "created_at >= ${}", "created_at <= ${}")
_Present = tuple[bool, bool, bool]


def _where(present: _Present, first: int) -> str:
    used = [c for c, on in zip(_CONDITIONS, present, strict=True) if on]
    return "".join(f" AND {c.format(n)}" for n, c in enumerate(used, start=first))


def _by_status(present: _Present) -> Sql:
    return sql(
        "SELECT status, COUNT(*) AS orders, SUM(total_cents) AS revenue"  # noqa: S608 - constant text
        f" FROM order_statistics_orders WHERE 1 = 1{_where(present, 1)} GROUP BY status"
    )


def _top(present: _Present) -> Sql:
    # $1 the excluded status, then the filters, then the limit.
    return sql(
        "SELECT t.product_id, COALESCE(p.name, '') AS product_name, t.quantity, t.revenue"  # noqa: S608 - constant text
        " FROM (SELECT product_id, SUM(quantity) AS quantity, SUM(revenue_cents) AS revenue"
        f" FROM order_statistics_lines WHERE status <> $1{_where(present, 2)}"
        f" GROUP BY product_id ORDER BY SUM(quantity) DESC, product_id LIMIT ${2 + sum(present)})"
        " t LEFT JOIN order_statistics_products p ON p.product_id = t.product_id"
        " ORDER BY t.quantity DESC, t.product_id"
    )


_COMBINATIONS: list[_Present] = [(c, f, t) for c, f, t in product((False, True), repeat=3)]
_BY_STATUS = {present: _by_status(present) for present in _COMBINATIONS}
_TOP = {present: _top(present) for present in _COMBINATIONS}


def _line_rows(order_id: str, lines: list[OrderLine]) -> Iterator[Statement]:
    for line in lines:
        yield ADD_LINE(order_id, str(line.product_id), line.quantity, lines_total([line]))


class OrderStatisticsProjection(Projection):
    """Order totals and per-product quantities, ready for SQL aggregation."""

    name = "order_statistics"
    version = 1
    staged_rebuild = True  # both dialects build the same rows (test_staged_rebuild.py)
    tables = (
        "order_statistics_products",
        "order_statistics_orders",
        "order_statistics_lines",
    )
    indexes = (
        "order_statistics_orders_by_created",
        "order_statistics_orders_by_customer",
        "order_statistics_lines_by_created",
        "order_statistics_lines_by_customer",
    )
    schema = _SCHEMA
    truncate = _TRUNCATE

    @on(ProductAdded)
    def _product(self, event: ProductAdded) -> Iterator[Statement]:
        yield PUT_PRODUCT(event.product_id, event.name)

    @on(OrderCreated)
    def _created(self, event: OrderCreated) -> Iterator[Statement]:
        yield CREATE_ORDER(
            event.order_id,
            event.customer_id,
            PENDING,
            lines_total(event.items),
            timestamp(event.occurred_at),
        )
        yield from _line_rows(event.order_id, event.items)

    @on(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> Iterator[Statement]:
        yield ADD_TO_TOTAL(event.order_id, lines_total([event.item]))
        yield from _line_rows(event.order_id, [event.item])

    @on(OrderShipped)
    def _shipped(self, event: OrderShipped) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, SHIPPED)
        yield SET_LINES_STATUS(event.order_id, SHIPPED)

    @on(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, CANCELLED)
        yield SET_LINES_STATUS(event.order_id, CANCELLED)


def statistics_of_orders(
    read_models: ReadModelStore,
) -> Callable[[GetOrderStatistics], Awaitable[OrderStatistics]]:
    """Return the handler of :class:`GetOrderStatistics` (date bounds are inclusive)."""

    async def handle(query: GetOrderStatistics) -> OrderStatistics:
        given = (
            None if query.customer_id is None else str(query.customer_id),
            None if query.from_date is None else timestamp(query.from_date),
            None if query.to_date is None else timestamp(query.to_date),
        )
        present = (given[0] is not None, given[1] is not None, given[2] is not None)
        filters = [value for value in given if value is not None]
        by_status = dict.fromkeys(STATUSES, 0)
        revenue = 0
        for row in await read_models.fetch(_BY_STATUS[present], *filters):
            by_status[row["status"]] = int(row["orders"])
            if row["status"] != CANCELLED:
                revenue += int(row["revenue"] or 0)
        top = await read_models.fetch(_TOP[present], CANCELLED, *filters, TOP_PRODUCTS)
        paid = sum(count for status, count in by_status.items() if status != CANCELLED)
        return OrderStatistics(
            total_orders=sum(by_status.values()),
            total_revenue=from_cents(revenue),
            average_order_value=mean_money(revenue, paid),
            orders_by_status=by_status,
            top_products=[
                TopProduct(
                    product_id=UUID(row["product_id"]),
                    product_name=row["product_name"],
                    quantity=int(row["quantity"]),
                    revenue=from_cents(row["revenue"]),
                )
                for row in top
            ],
        )

    return handle
