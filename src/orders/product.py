"""Products: catalog entry with a price and a stock that orders reserve atomically."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from cqrskit.aggregate import Aggregate, applies
from cqrskit.errors import RuleViolation
from cqrskit.messages import Command, DomainEvent
from orders.values import Money, Name, Quantity

__all__ = [
    "AddProduct",
    "InsufficientStock",
    "Product",
    "ProductAdded",
    "ProductRestocked",
    "RestockProduct",
    "StockReleased",
    "StockReserved",
]


class InsufficientStock(RuleViolation):
    """An order asked for more units than a product has in stock."""


class AddProduct(Command):
    """Add a product to the catalog."""

    product_id: UUID
    name: Name
    unit_price: Money
    stock: int = Field(ge=0, le=1_000_000_000)


class RestockProduct(Command):
    """Add units to a product's stock."""

    product_id: UUID
    quantity: Quantity


class ProductAdded(DomainEvent):
    """A product entered the catalog."""

    product_id: str
    name: str
    unit_price: Decimal
    stock: int


class ProductRestocked(DomainEvent):
    """Units were added to a product's stock."""

    product_id: str
    quantity: int


class StockReserved(DomainEvent):
    """Units were taken from stock for an order."""

    product_id: str
    order_id: str
    quantity: int


class StockReleased(DomainEvent):
    """Units reserved for a cancelled order went back to stock."""

    product_id: str
    order_id: str
    quantity: int


class _ProductState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    unit_price: Decimal
    stock: int


class Product(Aggregate):
    """A product and its available stock (snapshottable: one StockReserved per order)."""

    category = "product"
    snapshot_version: ClassVar[int] = 1

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.name = ""
        self.unit_price = Decimal(0)
        self.stock = 0

    @classmethod
    def add(
        cls, product_id: str, name: str, unit_price: Decimal, stock: int, *, at: datetime
    ) -> Product:
        """Add a product to the catalog."""
        product = cls(product_id)
        product._raise(
            ProductAdded(
                product_id=product_id, name=name, unit_price=unit_price, stock=stock, occurred_at=at
            )
        )
        return product

    def snapshot_state(self) -> dict[str, Any]:
        """The state a snapshot stores (JSON-compatible)."""
        state = _ProductState(name=self.name, unit_price=self.unit_price, stock=self.stock)
        return state.model_dump(mode="json")

    @classmethod
    def from_snapshot(cls, aggregate_id: str, state: dict[str, Any]) -> Self:
        """Rebuild from :meth:`snapshot_state` output (raises when it does not fit)."""
        parsed = _ProductState.model_validate(state)
        product = cls(aggregate_id)
        product.name, product.unit_price, product.stock = (
            parsed.name,
            parsed.unit_price,
            parsed.stock,
        )
        return product

    def restock(self, quantity: int, *, at: datetime) -> None:
        """Add ``quantity`` units to stock."""
        self._raise(ProductRestocked(product_id=self.id, quantity=quantity, occurred_at=at))

    def reserve(self, order_id: str, quantity: int, *, at: datetime) -> None:
        """Take ``quantity`` units for an order; raise :class:`InsufficientStock`."""
        if quantity > self.stock:
            raise InsufficientStock(f"insufficient stock for product {self.id}")
        self._raise(
            StockReserved(product_id=self.id, order_id=order_id, quantity=quantity, occurred_at=at)
        )

    def release(self, order_id: str, quantity: int, *, at: datetime) -> None:
        """Return ``quantity`` units reserved for a cancelled order."""
        self._raise(
            StockReleased(product_id=self.id, order_id=order_id, quantity=quantity, occurred_at=at)
        )

    @applies(ProductAdded)
    def _added(self, event: ProductAdded) -> None:
        self.name = event.name
        self.unit_price = event.unit_price
        self.stock = event.stock

    @applies(ProductRestocked)
    def _restocked(self, event: ProductRestocked) -> None:
        self.stock += event.quantity

    @applies(StockReserved)
    def _reserved(self, event: StockReserved) -> None:
        self.stock -= event.quantity

    @applies(StockReleased)
    def _released(self, event: StockReleased) -> None:
        self.stock += event.quantity
