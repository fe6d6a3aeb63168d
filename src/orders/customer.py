"""Customers: registered once, referenced by orders."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from cqrskit.aggregate import Aggregate, applies
from cqrskit.messages import Command, DomainEvent
from orders.values import Email, Name

__all__ = ["Customer", "CustomerRegistered", "RegisterCustomer"]


class RegisterCustomer(Command):
    """Register a new customer."""

    customer_id: UUID
    name: Name
    email: Email


class CustomerRegistered(DomainEvent):
    """A customer was registered."""

    customer_id: str
    name: str
    email: str


class Customer(Aggregate):
    """A customer of the shop."""

    category = "customer"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.name = ""
        self.email = ""

    @classmethod
    def register(cls, customer_id: str, name: str, email: str, *, at: datetime) -> Customer:
        """Register a customer."""
        customer = cls(customer_id)
        customer._raise(
            CustomerRegistered(customer_id=customer_id, name=name, email=email, occurred_at=at)
        )
        return customer

    @applies(CustomerRegistered)
    def _registered(self, event: CustomerRegistered) -> None:
        self.name = event.name
        self.email = event.email
