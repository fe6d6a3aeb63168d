"""Orders: created with items and an address; items added while pending; shipped or cancelled.

Pure: no I/O, no clock (``at`` comes from the command), no random ids.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from cqrskit.aggregate import Aggregate, applies
from cqrskit.errors import InvalidState
from cqrskit.messages import Command, DomainEvent
from orders.values import MAX_ITEMS_PER_ORDER, Address, OrderLine

__all__ = [
    "AddOrderItem",
    "CancelOrder",
    "CreateOrder",
    "Order",
    "OrderCancelled",
    "OrderCreated",
    "OrderItemAdded",
    "OrderShipped",
    "OrderStatus",
    "ShipOrder",
    "ShippingAddressUpdated",
    "UpdateShippingAddress",
]


class OrderStatus(StrEnum):
    """Where an order is in its life."""

    PENDING = "pending"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class CreateOrder(Command):
    """Place an order; its stock is reserved in the same atomic append."""

    order_id: UUID
    customer_id: UUID
    items: list[OrderLine] = Field(min_length=1, max_length=MAX_ITEMS_PER_ORDER)
    shipping_address: Address


class AddOrderItem(Command):
    """Add a line to a pending order (reserving its stock)."""

    order_id: UUID
    item: OrderLine


class UpdateShippingAddress(Command):
    """Change where a pending order ships to."""

    order_id: UUID
    shipping_address: Address


class ShipOrder(Command):
    """Ship a pending order."""

    order_id: UUID


class CancelOrder(Command):
    """Cancel an order that has not shipped; its stock goes back."""

    order_id: UUID
    reason: str = Field(default="", max_length=500)


class OrderCreated(DomainEvent):
    """An order was placed."""

    order_id: str
    customer_id: str
    items: list[OrderLine]
    shipping_address: Address


class OrderItemAdded(DomainEvent):
    """A line was added to a pending order."""

    order_id: str
    item: OrderLine


class ShippingAddressUpdated(DomainEvent):
    """A pending order's shipping address changed."""

    order_id: str
    shipping_address: Address


class OrderShipped(DomainEvent):
    """An order shipped."""

    order_id: str


class OrderCancelled(DomainEvent):
    """An order was cancelled."""

    order_id: str
    reason: str


class _OrderState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str
    status: OrderStatus
    items: list[OrderLine]
    shipping_address: Address | None


class Order(Aggregate):
    """An order and its lines (snapshottable)."""

    category = "order"
    snapshot_version: ClassVar[int] = 1

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.customer_id = ""
        self.status = OrderStatus.PENDING
        self.items: list[OrderLine] = []
        self.shipping_address: Address | None = None

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot stores (JSON-compatible)."""
        state = _OrderState(
            customer_id=self.customer_id,
            status=self.status,
            items=self.items,
            shipping_address=self.shipping_address,
        )
        return state.model_dump(mode="json")

    @classmethod
    def from_snapshot(cls, aggregate_id: str, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot_state` output (raises when it does not fit)."""
        parsed = _OrderState.model_validate(state)
        order = cls(aggregate_id)
        order.customer_id = parsed.customer_id
        order.status = parsed.status
        order.items = list(parsed.items)
        order.shipping_address = parsed.shipping_address
        return order

    @property
    def total_amount(self) -> Decimal:
        """Sum of line subtotals, exact."""
        return sum((line.subtotal for line in self.items), Decimal(0))

    @classmethod
    def create(
        cls,
        order_id: str,
        customer_id: str,
        items: list[OrderLine],
        shipping_address: Address,
        *,
        at: datetime,
    ) -> Order:
        """Place an order."""
        order = cls(order_id)
        order._raise(
            OrderCreated(
                order_id=order_id,
                customer_id=customer_id,
                items=items,
                shipping_address=shipping_address,
                occurred_at=at,
            )
        )
        return order

    def add_item(self, item: OrderLine, *, at: datetime) -> None:
        """Add a line; only a pending order takes items."""
        self._require_pending("add items to")
        if len(self.items) >= MAX_ITEMS_PER_ORDER:
            raise InvalidState(f"an order holds at most {MAX_ITEMS_PER_ORDER} items")
        self._raise(OrderItemAdded(order_id=self.id, item=item, occurred_at=at))

    def update_shipping_address(self, address: Address, *, at: datetime) -> None:
        """Change the address; only before shipping or cancelling."""
        self._require_pending("change the address of")
        self._raise(
            ShippingAddressUpdated(order_id=self.id, shipping_address=address, occurred_at=at)
        )

    def ship(self, *, at: datetime) -> None:
        """Ship a pending order."""
        self._require_pending("ship")
        self._raise(OrderShipped(order_id=self.id, occurred_at=at))

    def cancel(self, reason: str, *, at: datetime) -> None:
        """Cancel; a shipped or already cancelled order cannot be cancelled."""
        self._require_pending("cancel")
        self._raise(OrderCancelled(order_id=self.id, reason=reason, occurred_at=at))

    def _require_pending(self, action: str) -> None:
        if self.status is not OrderStatus.PENDING:
            raise InvalidState(f"cannot {action} an order that is {self.status.value}")

    @applies(OrderCreated)
    def _created(self, event: OrderCreated) -> None:
        self.customer_id = event.customer_id
        self.items = list(event.items)
        self.shipping_address = event.shipping_address

    @applies(OrderItemAdded)
    def _item_added(self, event: OrderItemAdded) -> None:
        self.items.append(event.item)

    @applies(ShippingAddressUpdated)
    def _address_updated(self, event: ShippingAddressUpdated) -> None:
        self.shipping_address = event.shipping_address

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.status = OrderStatus.SHIPPED

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = OrderStatus.CANCELLED
