"""Order detail: one row per order plus its lines, with customer and product names.

Serves :class:`~orders.queries.GetOrderById`. Names come from this projection's own lookup
tables (``order_detail_customers``, ``order_detail_products``), fed by the same log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from uuid import UUID

from cqrskit.errors import NotFound
from cqrskit.messages import DomainEvent
from cqrskit.projections.projection import Projection, on
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from orders.customer import CustomerRegistered
from orders.order import (
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderShipped,
    OrderStatus,
    ShippingAddressUpdated,
)
from orders.product import ProductAdded
from orders.queries import GetOrderById, OrderItemView, OrderView
from orders.read_models._common import (
    CANCELLED,
    PENDING,
    SHIPPED,
    cents,
    from_cents,
    lines_total,
    timestamp,
)
from orders.values import Address

__all__ = ["OrderDetailProjection", "order_by_id"]

_SCHEMA = (
    sql(
        "CREATE TABLE IF NOT EXISTS order_detail_customers ("
        " customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_detail_products ("
        " product_id TEXT PRIMARY KEY, name TEXT NOT NULL)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_detail_orders ("
        " order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, customer_name TEXT NOT NULL,"
        " customer_email TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL,"
        " item_count BIGINT NOT NULL, street TEXT NOT NULL, city TEXT NOT NULL,"
        " postal_code TEXT NOT NULL, country TEXT NOT NULL, created_at TEXT NOT NULL,"
        " updated_at TEXT NOT NULL, version BIGINT NOT NULL DEFAULT 0)"
    ),
    sql(
        "CREATE TABLE IF NOT EXISTS order_detail_items ("
        " order_id TEXT NOT NULL, line_no BIGINT NOT NULL, product_id TEXT NOT NULL,"
        " product_name TEXT NOT NULL, quantity BIGINT NOT NULL,"
        " unit_price_cents BIGINT NOT NULL, PRIMARY KEY (order_id, line_no))"
    ),
)
_TRUNCATE = (
    sql("DELETE FROM order_detail_items"),
    sql("DELETE FROM order_detail_orders"),
    sql("DELETE FROM order_detail_products"),
    sql("DELETE FROM order_detail_customers"),
)

PUT_CUSTOMER = sql(
    "INSERT INTO order_detail_customers (customer_id, name, email) VALUES ($1, $2, $3)"
    " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, email = excluded.email",
    keys={"customer": 1},
)
PUT_PRODUCT = sql(
    "INSERT INTO order_detail_products (product_id, name) VALUES ($1, $2)"
    " ON CONFLICT (product_id) DO UPDATE SET name = excluded.name",
    keys={"product": 1},
)
CREATE_ORDER = sql(
    "INSERT INTO order_detail_orders (order_id, customer_id, customer_name, customer_email,"
    " status, total_cents, item_count, street, city, postal_code, country, created_at,"
    " updated_at, version) VALUES ($1, $2,"
    " COALESCE((SELECT name FROM order_detail_customers WHERE customer_id = $2), ''),"
    " COALESCE((SELECT email FROM order_detail_customers WHERE customer_id = $2), ''),"
    " $3, $4, $5, $6, $7, $8, $9, $10, $10, $11) ON CONFLICT (order_id) DO NOTHING",
    keys={"order": 1, "customer": 2},
)
INSERT_LINE = sql(
    "INSERT INTO order_detail_items (order_id, line_no, product_id, product_name, quantity,"
    " unit_price_cents) VALUES ($1, $2, $3,"
    " COALESCE((SELECT name FROM order_detail_products WHERE product_id = $3), ''), $4, $5)"
    " ON CONFLICT (order_id, line_no) DO NOTHING",
    keys={"order": 1, "product": 3},
)
APPEND_LINE = sql(
    "INSERT INTO order_detail_items (order_id, line_no, product_id, product_name, quantity,"
    " unit_price_cents) VALUES ($1,"
    " (SELECT COALESCE(MAX(line_no), 0) + 1 FROM order_detail_items WHERE order_id = $1), $2,"
    " COALESCE((SELECT name FROM order_detail_products WHERE product_id = $2), ''), $3, $4)",
    keys={"order": 1, "product": 2},
)
ADD_TO_TOTAL = sql(
    "UPDATE order_detail_orders SET total_cents = total_cents + $2,"
    " item_count = item_count + 1, updated_at = $3, version = $4 WHERE order_id = $1",
    keys={"order": 1},
)
SET_ADDRESS = sql(
    "UPDATE order_detail_orders SET street = $2, city = $3, postal_code = $4, country = $5,"
    " updated_at = $6, version = $7 WHERE order_id = $1",
    keys={"order": 1},
)
SET_STATUS = sql(
    "UPDATE order_detail_orders SET status = $2, updated_at = $3, version = $4 WHERE order_id = $1",
    keys={"order": 1},
)

_GET = sql(
    "SELECT o.order_id, o.customer_id, o.customer_name, o.customer_email, o.status,"
    " o.total_cents, o.item_count, o.street, o.city, o.postal_code, o.country, o.created_at,"
    " o.updated_at, o.version, i.line_no, i.product_id, i.product_name, i.quantity,"
    " i.unit_price_cents"
    " FROM order_detail_orders o"
    " LEFT JOIN order_detail_items i ON i.order_id = o.order_id"
    " WHERE o.order_id = $1 ORDER BY i.line_no"
)

_ORDER_EVENTS = (OrderCreated, OrderItemAdded, ShippingAddressUpdated, OrderShipped, OrderCancelled)


class OrderDetailProjection(Projection):
    """Orders with their lines, customer name and email, and shipping address."""

    name = "order_detail"
    version = 2  # 2: orders carry their stream version (the ETag)
    staged_rebuild = True  # both dialects build the same rows (test_staged_rebuild.py)
    tables = (
        "order_detail_customers",
        "order_detail_products",
        "order_detail_orders",
        "order_detail_items",
    )
    schema = _SCHEMA
    truncate = _TRUNCATE

    def cache_tags(self, event: DomainEvent) -> Iterable[str]:
        """``order:<id>`` for an order's events; customers and products change no order row."""
        if isinstance(event, _ORDER_EVENTS):
            return (f"order:{event.order_id}",)
        return ()

    @on(CustomerRegistered)
    def _customer(self, event: CustomerRegistered) -> Iterator[Statement]:
        yield PUT_CUSTOMER(event.customer_id, event.name, event.email)

    @on(ProductAdded)
    def _product(self, event: ProductAdded) -> Iterator[Statement]:
        yield PUT_PRODUCT(event.product_id, event.name)

    @on(OrderCreated)
    def _created(self, event: OrderCreated) -> Iterator[Statement]:
        address = event.shipping_address
        yield CREATE_ORDER(
            event.order_id,
            event.customer_id,
            PENDING,
            lines_total(event.items),
            len(event.items),
            address.street,
            address.city,
            address.postal_code,
            address.country,
            timestamp(event.occurred_at),
            event.version,
        )
        for line_no, line in enumerate(event.items, start=1):
            yield INSERT_LINE(
                event.order_id, line_no, str(line.product_id), line.quantity, cents(line.unit_price)
            )

    @on(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> Iterator[Statement]:
        item = event.item
        yield APPEND_LINE(
            event.order_id, str(item.product_id), item.quantity, cents(item.unit_price)
        )
        yield ADD_TO_TOTAL(
            event.order_id, lines_total([item]), timestamp(event.occurred_at), event.version
        )

    @on(ShippingAddressUpdated)
    def _address(self, event: ShippingAddressUpdated) -> Iterator[Statement]:
        address = event.shipping_address
        yield SET_ADDRESS(
            event.order_id,
            address.street,
            address.city,
            address.postal_code,
            address.country,
            timestamp(event.occurred_at),
            event.version,
        )

    @on(OrderShipped)
    def _shipped(self, event: OrderShipped) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, SHIPPED, timestamp(event.occurred_at), event.version)

    @on(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> Iterator[Statement]:
        yield SET_STATUS(event.order_id, CANCELLED, timestamp(event.occurred_at), event.version)


def order_by_id(read_models: ReadModelStore) -> Callable[[GetOrderById], Awaitable[OrderView]]:
    """Return the handler of :class:`GetOrderById` (raises ``NotFound`` for an unknown id)."""

    async def handle(query: GetOrderById) -> OrderView:
        rows = await read_models.fetch(_GET, str(query.order_id))
        if not rows:
            raise NotFound("order", str(query.order_id))
        head = rows[0]
        items = [
            OrderItemView(
                product_id=UUID(row["product_id"]),
                product_name=row["product_name"],
                quantity=int(row["quantity"]),
                unit_price=from_cents(row["unit_price_cents"]),
                subtotal=from_cents(int(row["quantity"]) * int(row["unit_price_cents"])),
            )
            for row in rows
            if row["line_no"] is not None
        ]
        return OrderView(
            id=UUID(head["order_id"]),
            customer_id=UUID(head["customer_id"]),
            customer_name=head["customer_name"],
            customer_email=head["customer_email"],
            status=OrderStatus(head["status"]),
            total_amount=from_cents(head["total_cents"]),
            item_count=int(head["item_count"]),
            items=items,
            shipping_address=Address(
                street=head["street"],
                city=head["city"],
                postal_code=head["postal_code"],
                country=head["country"],
            ),
            created_at=datetime.fromisoformat(head["created_at"]),
            updated_at=datetime.fromisoformat(head["updated_at"]),
            version=int(head["version"]),
        )

    return handle
