"""A realistic sample for the orders service, loaded through the command bus.

Every record is made by a real command (register, add product, create order, add item, ship,
cancel, restock), so the sample exercises the same rules and projections as live traffic.
Choices come from a seeded :class:`random.Random`: on an empty database the same ``orders``
count always produces the same customers, products, orders and outcomes. The seed includes
the log's head position, so loading the sample again into the same database makes new ids
instead of colliding with the first load.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import UUID

from cqrskit.messages import utc_now
from cqrskit.service import Runtime
from orders.customer import RegisterCustomer
from orders.order import AddOrderItem, CancelOrder, CreateOrder, ShipOrder
from orders.product import AddProduct, InsufficientStock, RestockProduct
from orders.values import Address, OrderLine

__all__ = ["CUSTOMERS", "PRODUCTS", "load_demo_data"]

CUSTOMERS = 40
PRODUCTS = 25

_FIRST = [
    "Ada",
    "Alan",
    "Amara",
    "Ben",
    "Chloe",
    "Dmitri",
    "Elena",
    "Farah",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Liam",
    "Maya",
    "Nils",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Yara",
    "Zoe",
]
_LAST = [
    "Adeyemi",
    "Bauer",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quinn",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhang",
]
_DOMAINS = ("example.com", "example.org", "example.net")
_CATALOG = (
    ("Espresso Machine", "249.00"),
    ("Burr Coffee Grinder", "89.90"),
    ("Pour-Over Kettle", "54.50"),
    ("Ceramic Mug", "12.00"),
    ("Travel Tumbler", "24.95"),
    ("Milk Frother", "39.99"),
    ("Coffee Beans, 1 kg", "21.40"),
    ("Paper Filters (100)", "4.75"),
    ("Cast Iron Skillet", "45.00"),
    ("Chef's Knife", "79.00"),
    ("Cutting Board", "29.50"),
    ("Stand Mixer", "329.00"),
    ("Silicone Spatula", "7.25"),
    ("Measuring Cups", "14.99"),
    ("Dutch Oven", "119.00"),
    ("Tea Infuser", "9.80"),
    ("Loose Leaf Tea", "16.60"),
    ("Water Filter Pitcher", "34.90"),
    ("Salad Spinner", "27.00"),
    ("Kitchen Scale", "22.49"),
    ("Oven Mitts", "11.30"),
    ("Glass Storage Set", "38.75"),
    ("Wooden Spoon Set", "13.40"),
    ("Toaster", "64.00"),
    ("Blender", "99.95"),
)
_STREETS = ("Main St", "High St", "Station Rd", "Park Ave", "Mill Lane", "Church St", "Quay")
_CITIES = (
    ("Lyon", "FR"),
    ("Porto", "PT"),
    ("Leeds", "GB"),
    ("Graz", "AT"),
    ("Utrecht", "NL"),
    ("Bergen", "NO"),
    ("Toronto", "CA"),
    ("Austin", "US"),
)
_REASONS = ("customer changed their mind", "duplicate order", "found a better price", "")


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def _address(rng: random.Random) -> Address:
    city, country = rng.choice(_CITIES)
    return Address(
        street=f"{rng.randint(1, 250)} {rng.choice(_STREETS)}",
        city=city,
        postal_code=f"{rng.randint(10000, 99999)}",
        country=country,
    )


class _Loader:
    """Dispatches the sample's commands with a clock that moves forward through the period."""

    def __init__(self, runtime: Runtime, rng: random.Random, start: datetime, step: timedelta):
        self.runtime = runtime
        self.rng = rng
        self.clock = start
        self.step = step
        self.commands = 0
        self.stock: dict[UUID, int] = {}
        self.prices: dict[UUID, Decimal] = {}

    def tick(self) -> datetime:
        self.clock += self.step * self.rng.uniform(0.2, 1.8)
        return self.clock

    async def send(self, command: RegisterCustomer | AddProduct | RestockProduct) -> None:
        await self.runtime.command_bus.dispatch(command)
        self.commands += 1

    async def ensure_stock(self, product_id: UUID, quantity: int) -> None:
        # The sample keeps its own tally of stock, so it restocks instead of failing an order.
        if self.stock[product_id] < quantity:
            extra = max(quantity, 200)
            await self.send(
                RestockProduct(product_id=product_id, quantity=extra, timestamp=self.tick())
            )
            self.stock[product_id] += extra

    async def place(self, command: CreateOrder | AddOrderItem, lines: list[OrderLine]) -> bool:
        for line in lines:
            await self.ensure_stock(line.product_id, line.quantity)
        try:
            await self.runtime.command_bus.dispatch(command)
        except InsufficientStock:
            # Someone else (a live service on the same database) took the stock first.
            return False
        self.commands += 1
        for line in lines:
            self.stock[line.product_id] -= line.quantity
        return True

    def line(self, product_ids: list[UUID]) -> OrderLine:
        product_id = self.rng.choice(product_ids)
        quantity = self.rng.choices((1, 2, 3, 4), weights=(60, 25, 10, 5))[0]
        return OrderLine(
            product_id=product_id, quantity=quantity, unit_price=self.prices[product_id]
        )


async def load_demo_data(runtime: Runtime, orders: int) -> int:
    """Load customers, products and ``orders`` orders; return how many commands were sent.

    About 20% of the orders get an extra item, 30% ship and 10% are cancelled; products are
    restocked whenever the sample would otherwise run out. Commands go through
    ``runtime.command_bus``, so middleware, rules and projections all see them.
    """
    if orders < 0:
        raise ValueError("orders must not be negative")
    head = await runtime.backend.store.head()
    rng = random.Random(f"orders-demo:{head.token()}")  # noqa: S311 - sample data, not secrets
    days = 90
    start = utc_now() - timedelta(days=days)
    events_per_period = CUSTOMERS + PRODUCTS + orders * 2 + 1
    loader = _Loader(runtime, rng, start, timedelta(days=days) / events_per_period)

    customers: list[UUID] = []
    for _ in range(CUSTOMERS):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        customer_id = _uuid(rng)
        email = f"{first}.{last}.{rng.randint(1, 999)}@{rng.choice(_DOMAINS)}".lower()
        await loader.send(
            RegisterCustomer(
                customer_id=customer_id,
                name=f"{first} {last}",
                email=email,
                timestamp=loader.tick(),
            )
        )
        customers.append(customer_id)

    products: list[UUID] = []
    for name, price in _CATALOG[:PRODUCTS]:
        product_id = _uuid(rng)
        stock = rng.randint(150, 600)
        await loader.send(
            AddProduct(
                product_id=product_id,
                name=name,
                unit_price=Decimal(price),
                stock=stock,
                timestamp=loader.tick(),
            )
        )
        products.append(product_id)
        loader.stock[product_id] = stock
        loader.prices[product_id] = Decimal(price)

    for _ in range(orders):
        order_id = _uuid(rng)
        lines = [loader.line(products) for _ in range(rng.randint(1, 4))]
        created = await loader.place(
            CreateOrder(
                order_id=order_id,
                customer_id=rng.choice(customers),
                items=lines,
                shipping_address=_address(rng),
                timestamp=loader.tick(),
            ),
            lines,
        )
        if not created:
            continue
        if rng.random() < 0.2:
            extra = loader.line(products)
            if await loader.place(
                AddOrderItem(order_id=order_id, item=extra, timestamp=loader.tick()), [extra]
            ):
                lines.append(extra)
        outcome = rng.random()
        if outcome < 0.3:
            await runtime.command_bus.dispatch(
                ShipOrder(order_id=order_id, timestamp=loader.tick())
            )
            loader.commands += 1
        elif outcome < 0.4:
            await runtime.command_bus.dispatch(
                CancelOrder(order_id=order_id, reason=rng.choice(_REASONS), timestamp=loader.tick())
            )
            loader.commands += 1
            for line in lines:
                loader.stock[line.product_id] += line.quantity
    return loader.commands
