"""Queries of the orders service and the views they answer with.

Every handler of these queries reads read models only (never an aggregate). Money is
``Decimal``, returned exactly; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, StringConstraints

from cqrskit.messages import Message, Query
from orders.order import OrderStatus
from orders.values import Address

__all__ = [
    "CustomerSummary",
    "GetCustomerSummary",
    "GetOrderById",
    "GetOrderStatistics",
    "GetOrdersByCustomer",
    "OrderItemView",
    "OrderStatistics",
    "OrderSummaryPage",
    "OrderSummaryView",
    "OrderView",
    "SearchOrders",
    "TopProduct",
]

PageNumber = Annotated[int, Field(ge=1, le=1_000_000)]
PageSize = Annotated[int, Field(ge=1, le=100)]


class GetOrderById(Query):
    """One order with its items, customer name and email, and address."""

    order_id: UUID


class GetOrdersByCustomer(Query):
    """A customer's orders, newest first, optionally of one status, paginated."""

    customer_id: UUID
    status: OrderStatus | None = None
    page: PageNumber = 1
    page_size: PageSize = 20


class SearchOrders(Query):
    """Full-text search over customer name, email and product names, with filters."""

    q: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    status: OrderStatus | None = None
    customer_id: UUID | None = None
    sort_by: Literal["created_at", "updated_at", "total_amount"] = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    page: PageNumber = 1
    page_size: PageSize = 20


class GetOrderStatistics(Query):
    """Totals over orders, optionally for one customer and a creation-date range."""

    customer_id: UUID | None = None
    from_date: datetime | None = None
    to_date: datetime | None = None


class GetCustomerSummary(Query):
    """One customer's order summary."""

    customer_id: UUID


class OrderItemView(Message):
    """One line of an order view."""

    product_id: UUID
    product_name: str
    quantity: int
    unit_price: Decimal
    subtotal: Decimal


class OrderView(Message):
    """An order as the API shows it."""

    id: UUID
    customer_id: UUID
    customer_name: str
    customer_email: str
    status: OrderStatus
    total_amount: Decimal
    item_count: int
    items: list[OrderItemView]
    shipping_address: Address
    created_at: datetime
    updated_at: datetime
    version: int = 0
    """The order stream's version this view reflects (the HTTP ``ETag``)."""


class OrderSummaryView(Message):
    """An order in a list: no lines, no address."""

    id: UUID
    customer_id: UUID
    customer_name: str
    status: OrderStatus
    total_amount: Decimal
    item_count: int
    created_at: datetime
    updated_at: datetime


class OrderSummaryPage(Message):
    """One page of orders."""

    items: list[OrderSummaryView]
    total: int
    page: int
    page_size: int


class TopProduct(Message):
    """A product ranked by units ordered (cancelled orders excluded)."""

    product_id: UUID
    product_name: str
    quantity: int
    revenue: Decimal


class OrderStatistics(Message):
    """Totals over a set of orders.

    ``total_orders`` counts every order; revenue and the average exclude cancelled orders.
    """

    total_orders: int
    total_revenue: Decimal
    average_order_value: Decimal
    orders_by_status: dict[str, int]
    top_products: list[TopProduct]


class CustomerSummary(Message):
    """One customer's orders in figures."""

    customer_id: UUID
    name: str
    email: str
    total_orders: int
    total_spent: Decimal
    orders_by_status: dict[str, int]
    first_order_at: datetime | None
    last_order_at: datetime | None
