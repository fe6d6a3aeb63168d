"""Value types shared by the orders domain: money, quantities, addresses, order lines."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import Field, StringConstraints

from cqrskit.messages import Message

__all__ = [
    "MAX_ITEMS_PER_ORDER",
    "Address",
    "Email",
    "Money",
    "Name",
    "OrderLine",
    "Quantity",
]

MAX_ITEMS_PER_ORDER = 100

Money = Annotated[Decimal, Field(ge=Decimal("0.01"), le=Decimal("1000000000"), decimal_places=2)]
"""An exact amount with at most two decimal places."""
Quantity = Annotated[int, Field(ge=1, le=1_000_000)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, max_length=254, pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$"
    ),
]
_Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
_PostalCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)]


class Address(Message):
    """A shipping address."""

    street: _Line
    city: _Line
    postal_code: _PostalCode
    country: _Line


class OrderLine(Message):
    """One line of an order: a product, how many, at what unit price."""

    product_id: UUID
    quantity: Quantity
    unit_price: Money

    @property
    def subtotal(self) -> Decimal:
        """``quantity * unit_price``, exact."""
        return self.unit_price * self.quantity
