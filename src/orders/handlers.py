"""Command handlers: the imperative shell of the write side.

Each handler loads what it needs from the repository, calls pure aggregate methods with the
command's timestamp, and returns; the command bus appends every changed stream in one atomic
call with the versions it loaded. An order and the stock it reserves commit together, so two
racing orders for the last unit cannot both succeed: the loser's append fails its expected
version, is retried, and then sees the stock is gone.
"""

from __future__ import annotations

from collections import Counter
from uuid import UUID

from cqrskit.command_bus import CommandBus
from cqrskit.errors import InvalidState
from cqrskit.repository import Repository
from orders.customer import Customer, RegisterCustomer
from orders.order import (
    AddOrderItem,
    CancelOrder,
    CreateOrder,
    Order,
    ShipOrder,
    UpdateShippingAddress,
)
from orders.product import AddProduct, Product, RestockProduct

__all__ = ["AlreadyExists", "register_command_handlers"]


class AlreadyExists(InvalidState):
    """A create command named an id that is already taken."""


async def register_customer(command: RegisterCustomer, repo: Repository) -> None:
    customer_id = str(command.customer_id)
    if await repo.get(Customer, customer_id) is not None:
        raise AlreadyExists("customer already exists")
    repo.add(Customer.register(customer_id, command.name, command.email, at=command.timestamp))


async def add_product(command: AddProduct, repo: Repository) -> None:
    product_id = str(command.product_id)
    if await repo.get(Product, product_id) is not None:
        raise AlreadyExists("product already exists")
    repo.add(
        Product.add(
            product_id, command.name, command.unit_price, command.stock, at=command.timestamp
        )
    )


async def restock_product(command: RestockProduct, repo: Repository) -> None:
    product = await repo.load(Product, str(command.product_id))
    product.restock(command.quantity, at=command.timestamp)


async def _reserve(
    repo: Repository, order_id: str, wanted: Counter[UUID], command: CreateOrder | AddOrderItem
) -> None:
    # Sorted so that concurrent orders touch products in one global order.
    for product_id in sorted(wanted):
        product = await repo.load(Product, str(product_id))
        product.reserve(order_id, wanted[product_id], at=command.timestamp)


def _order_exists() -> AlreadyExists:
    return AlreadyExists("order already exists")


async def create_order(command: CreateOrder, repo: Repository) -> None:
    # The order id is not read up front: the append's new-stream check finds a taken id
    # (``if_exists``), which saves two round trips (snapshot lookup, stream read) per order.
    order_id = str(command.order_id)
    await repo.load(Customer, str(command.customer_id))
    wanted: Counter[UUID] = Counter()
    for line in command.items:
        wanted[line.product_id] += line.quantity
    try:
        await _reserve(repo, order_id, wanted, command)
        order = Order.create(
            order_id,
            str(command.customer_id),
            list(command.items),
            command.shipping_address,
            at=command.timestamp,
        )
    except Exception:
        # A taken id is reported before any later rejection, as when it was checked first;
        # only this error path pays the read.
        if await repo.get(Order, order_id) is not None:
            raise _order_exists() from None
        raise
    repo.add(order, if_exists=_order_exists)


async def add_order_item(command: AddOrderItem, repo: Repository) -> None:
    order = await repo.load(Order, str(command.order_id))
    order.add_item(command.item, at=command.timestamp)
    await _reserve(
        repo, order.id, Counter({command.item.product_id: command.item.quantity}), command
    )


async def update_shipping_address(command: UpdateShippingAddress, repo: Repository) -> None:
    order = await repo.load(Order, str(command.order_id))
    order.update_shipping_address(command.shipping_address, at=command.timestamp)


async def ship_order(command: ShipOrder, repo: Repository) -> None:
    order = await repo.load(Order, str(command.order_id))
    order.ship(at=command.timestamp)


async def cancel_order(command: CancelOrder, repo: Repository) -> None:
    order = await repo.load(Order, str(command.order_id))
    order.cancel(command.reason, at=command.timestamp)
    released: Counter[UUID] = Counter()
    for line in order.items:
        released[line.product_id] += line.quantity
    for product_id in sorted(released):
        product = await repo.load(Product, str(product_id))
        product.release(order.id, released[product_id], at=command.timestamp)


def register_command_handlers(bus: CommandBus) -> None:
    """Register every orders command handler on ``bus``."""
    bus.register(RegisterCustomer, register_customer)
    bus.register(AddProduct, add_product)
    bus.register(RestockProduct, restock_product)
    bus.register(CreateOrder, create_order)
    bus.register(AddOrderItem, add_order_item)
    bus.register(UpdateShippingAddress, update_shipping_address)
    bus.register(ShipOrder, ship_order)
    bus.register(CancelOrder, cancel_order)
