"""HTTP routes of the orders service (the seed's paths, under ``/api/v1``).

Request bodies are their own models, not the commands: the server picks every new id
(``uuid4``) and the command's timestamp, and the user id never comes from the body. Every
command answers with its consistency token, in the body (``consistency_token``) and in the
``X-Consistency-Token`` header. Queries read read models, which are eventually consistent:
a GET right after a command may not see it yet, unless it passes the token back
(``X-Consistency-Token`` header or ``?consistent_with=``): then it waits, bounded, for the
read models it reads and says whether it is ``stale`` (see :mod:`cqrskit.http.consistency`).

Every command endpoint accepts an ``Idempotency-Key`` header (a retry gets the first
response, see :mod:`cqrskit.http.idempotency`); order commands accept ``If-Match`` with the
``ETag`` that ``GET /orders/{order_id}`` returns (the order's version): a stale one is 412.

``/orders/search`` and ``/orders/statistics`` are declared before ``/orders/{order_id}`` so
they are not taken for an order id.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID, uuid4

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from cqrskit.http import Queries
from cqrskit.http.idempotency import Once, etag
from orders.customer import RegisterCustomer
from orders.order import (
    AddOrderItem,
    CancelOrder,
    CreateOrder,
    Order,
    OrderStatus,
    ShipOrder,
    UpdateShippingAddress,
)
from orders.product import AddProduct, RestockProduct
from orders.queries import (
    CustomerSummary,
    GetCustomerSummary,
    GetOrderById,
    GetOrdersByCustomer,
    GetOrderStatistics,
    OrderStatistics,
    OrderSummaryPage,
    OrderView,
    SearchOrders,
)
from orders.values import MAX_ITEMS_PER_ORDER, Address, Email, Money, Name, OrderLine, Quantity

__all__ = [
    "AddressRequest",
    "CreateCustomerRequest",
    "CreateOrderRequest",
    "CreateProductRequest",
    "OrderItemRequest",
    "RestockRequest",
    "router",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def _plausible(moment: datetime) -> datetime:
    if not 1900 <= moment.year <= 9000:
        raise ValueError("year must be between 1900 and 9000")
    return moment


Text = Annotated[Name, AfterValidator(_printable)]
PostalCode = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=20),
    AfterValidator(_printable),
]
SafeEmail = Annotated[Email, AfterValidator(_printable)]
Moment = Annotated[datetime, AfterValidator(_plausible)]
SafeQuery = Annotated[str, Field(max_length=200), AfterValidator(_printable)]
Reason = Annotated[str, Field(max_length=500), AfterValidator(_printable)]
Page = Annotated[int, Query(ge=1, le=1_000_000)]
PageSize = Annotated[int, Query(ge=1, le=100)]


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CreateCustomerRequest(_Request):
    """Register a customer."""

    name: Text
    email: SafeEmail


class CreateProductRequest(_Request):
    """Add a product to the catalog."""

    name: Text
    unit_price: Money
    stock: int = Field(ge=0, le=1_000_000_000)


class RestockRequest(_Request):
    """Add units to a product's stock."""

    quantity: Quantity


class AddressRequest(_Request):
    """A shipping address."""

    street: Text
    city: Text
    postal_code: PostalCode
    country: Text

    def to_address(self) -> Address:
        """The domain value."""
        return Address.model_validate(self.model_dump())


class OrderItemRequest(_Request):
    """One order line."""

    product_id: UUID
    quantity: Quantity
    unit_price: Money

    def to_line(self) -> OrderLine:
        """The domain value."""
        return OrderLine(
            product_id=self.product_id, quantity=self.quantity, unit_price=self.unit_price
        )


class CreateOrderRequest(_Request):
    """Place an order."""

    customer_id: UUID
    items: list[OrderItemRequest] = Field(min_length=1, max_length=MAX_ITEMS_PER_ORDER)
    shipping_address: AddressRequest


class _Accepted(BaseModel):
    consistency_token: str | None


class CustomerCreated(_Accepted):
    """A registered customer's id."""

    customer_id: UUID


class ProductCreated(_Accepted):
    """A new product's id."""

    product_id: UUID


class ProductRestocked(_Accepted):
    """A restocked product."""

    status: Literal["restocked"] = "restocked"
    product_id: UUID


class OrderCreated(_Accepted):
    """A placed order's id."""

    order_id: UUID


class OrderChanged(_Accepted):
    """What happened to an order."""

    status: Literal["item_added", "address_updated", "shipped", "cancelled"]
    order_id: UUID


router = APIRouter(prefix="/api/v1", tags=["orders"])


def _stream(order_id: UUID) -> str:
    return Order.stream_id_for(str(order_id))


@router.post("/customers", status_code=201)
async def register_customer(body: CreateCustomerRequest, commands: Once) -> CustomerCreated:
    """Register a customer."""
    sent, token = await commands.send(
        RegisterCustomer(customer_id=uuid4(), name=body.name, email=body.email)
    )
    return CustomerCreated(customer_id=sent.customer_id, consistency_token=token)


@router.post("/products", status_code=201)
async def add_product(body: CreateProductRequest, commands: Once) -> ProductCreated:
    """Add a product to the catalog."""
    sent, token = await commands.send(
        AddProduct(product_id=uuid4(), name=body.name, unit_price=body.unit_price, stock=body.stock)
    )
    return ProductCreated(product_id=sent.product_id, consistency_token=token)


@router.post("/products/{product_id}/restock")
async def restock_product(
    product_id: UUID, body: RestockRequest, commands: Once
) -> ProductRestocked:
    """Add units to a product's stock."""
    _, token = await commands.send(RestockProduct(product_id=product_id, quantity=body.quantity))
    return ProductRestocked(product_id=product_id, consistency_token=token)


@router.post("/orders", status_code=201)
async def create_order(body: CreateOrderRequest, commands: Once) -> OrderCreated:
    """Place an order; its stock is reserved atomically (insufficient stock: 400)."""
    sent, token = await commands.send(
        CreateOrder(
            order_id=uuid4(),
            customer_id=body.customer_id,
            items=[item.to_line() for item in body.items],
            shipping_address=body.shipping_address.to_address(),
        )
    )
    return OrderCreated(order_id=sent.order_id, consistency_token=token)


@router.get("/orders/search", response_model=OrderSummaryPage)
async def search_orders(
    queries: Queries,
    q: Annotated[SafeQuery, Query()] = "",
    status: Annotated[OrderStatus | None, Query()] = None,
    customer_id: Annotated[UUID | None, Query()] = None,
    sort_by: Annotated[Literal["created_at", "updated_at", "total_amount"], Query()] = (
        "created_at"
    ),
    sort_order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    page: Page = 1,
    page_size: PageSize = 20,
) -> Response:
    """Full-text search over customer name, email and product names, with filters."""
    query = SearchOrders(
        q=q,
        status=status,
        customer_id=customer_id,
        sort_by=sort_by,
        sort_order=sort_order,
        page=page,
        page_size=page_size,
    )
    return await queries.answer(query, OrderSummaryPage)


@router.get("/orders/statistics", response_model=OrderStatistics)
async def order_statistics(
    queries: Queries,
    customer_id: Annotated[UUID | None, Query()] = None,
    from_date: Annotated[Moment | None, Query()] = None,
    to_date: Annotated[Moment | None, Query()] = None,
) -> Response:
    """Totals, average order value, orders by status and top products."""
    query = GetOrderStatistics(customer_id=customer_id, from_date=from_date, to_date=to_date)
    return await queries.answer(query, OrderStatistics)


@router.get("/orders/{order_id}", response_model=OrderView)
async def get_order(order_id: UUID, queries: Queries) -> Response:
    """One order with its items, customer name and email, and address.

    The ``ETag`` is the order's version, for ``If-Match`` on the order's commands.
    """
    return await queries.answer(GetOrderById(order_id=order_id), OrderView, headers_of=_etag_of)


def _etag_of(view: OrderView) -> dict[str, str]:
    return {"ETag": etag(view.version)}


@router.post("/orders/{order_id}/items")
async def add_order_item(order_id: UUID, body: OrderItemRequest, commands: Once) -> OrderChanged:
    """Add a line to a pending order (409 once shipped or cancelled)."""
    _, token = await commands.send(
        AddOrderItem(order_id=order_id, item=body.to_line()), stream_id=_stream(order_id)
    )
    return OrderChanged(status="item_added", order_id=order_id, consistency_token=token)


@router.put("/orders/{order_id}/shipping-address")
async def update_shipping_address(
    order_id: UUID, body: AddressRequest, commands: Once
) -> OrderChanged:
    """Change where a pending order ships to."""
    _, token = await commands.send(
        UpdateShippingAddress(order_id=order_id, shipping_address=body.to_address()),
        stream_id=_stream(order_id),
    )
    return OrderChanged(status="address_updated", order_id=order_id, consistency_token=token)


@router.post("/orders/{order_id}/ship")
async def ship_order(order_id: UUID, commands: Once) -> OrderChanged:
    """Ship a pending order."""
    _, token = await commands.send(ShipOrder(order_id=order_id), stream_id=_stream(order_id))
    return OrderChanged(status="shipped", order_id=order_id, consistency_token=token)


@router.delete("/orders/{order_id}")
async def cancel_order(
    order_id: UUID, commands: Once, reason: Annotated[Reason, Query()] = ""
) -> OrderChanged:
    """Cancel an order that has not shipped; its stock goes back."""
    _, token = await commands.send(
        CancelOrder(order_id=order_id, reason=reason), stream_id=_stream(order_id)
    )
    return OrderChanged(status="cancelled", order_id=order_id, consistency_token=token)


@router.get("/customers/{customer_id}/orders", response_model=OrderSummaryPage)
async def customer_orders(
    customer_id: UUID,
    queries: Queries,
    status: Annotated[OrderStatus | None, Query()] = None,
    page: Page = 1,
    page_size: PageSize = 20,
) -> Response:
    """A customer's orders, newest first, optionally of one status."""
    query = GetOrdersByCustomer(
        customer_id=customer_id, status=status, page=page, page_size=page_size
    )
    return await queries.answer(query, OrderSummaryPage)


@router.get("/customers/{customer_id}/summary", response_model=CustomerSummary)
async def customer_summary(customer_id: UUID, queries: Queries) -> Response:
    """One customer's order figures (404 for an unknown customer)."""
    return await queries.answer(GetCustomerSummary(customer_id=customer_id), CustomerSummary)


def __dir__() -> list[str]:
    return list(__all__)
