"""Conversions shared by the orders read models: cents, timestamps, statuses, summary rows.

Money is stored as integer cents (BIGINT) so sums are exact on every backend; timestamps as
ISO-8601 UTC text with a fixed width, so that text order is time order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

from orders.order import OrderStatus
from orders.queries import OrderSummaryView
from orders.values import OrderLine

__all__ = [
    "CANCELLED",
    "PENDING",
    "SHIPPED",
    "STATUSES",
    "cents",
    "from_cents",
    "from_timestamp",
    "lines_total",
    "mean_money",
    "summary_view",
    "timestamp",
]

PENDING = OrderStatus.PENDING.value
SHIPPED = OrderStatus.SHIPPED.value
CANCELLED = OrderStatus.CANCELLED.value
STATUSES: tuple[str, ...] = tuple(status.value for status in OrderStatus)

_CENT = Decimal("0.01")


def cents(amount: Decimal) -> int:
    """Return ``amount`` (at most two decimal places) as integer cents."""
    return int(amount * 100)


def from_cents(value: int | Decimal | None) -> Decimal:
    """Return integer cents (``None`` for an empty sum) as an exact amount."""
    return (Decimal(int(value or 0)) / 100).quantize(_CENT)


def mean_money(total_cents: int, count: int) -> Decimal:
    """Return ``total_cents / count`` as money rounded half up to the cent (0.00 when empty)."""
    if count == 0:
        return Decimal("0.00")
    return (Decimal(total_cents) / count / 100).quantize(_CENT, rounding=ROUND_HALF_UP)


def timestamp(moment: datetime) -> str:
    """Render a moment as fixed-width ISO-8601 UTC text (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_timestamp(text: str | None) -> datetime | None:
    """Parse what :func:`timestamp` wrote."""
    return None if text is None else datetime.fromisoformat(text)


def lines_total(lines: Iterable[OrderLine]) -> int:
    """Sum of the lines' subtotals, in cents."""
    return sum(line.quantity * cents(line.unit_price) for line in lines)


def summary_view(row: Mapping[str, Any]) -> OrderSummaryView:
    """Build an order summary from a row with the summary columns."""
    return OrderSummaryView(
        id=UUID(row["order_id"]),
        customer_id=UUID(row["customer_id"]),
        customer_name=row["customer_name"],
        status=OrderStatus(row["status"]),
        total_amount=from_cents(row["total_cents"]),
        item_count=int(row["item_count"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )
