"""The orders read models on real backends: commands in, queries answered from projections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from cqrskit.config import Settings
from cqrskit.errors import NotFound
from cqrskit.messages import LOG_START, Command, LogPosition, Query
from cqrskit.service import Runtime
from orders.customer import RegisterCustomer
from orders.order import (
    AddOrderItem,
    CancelOrder,
    CreateOrder,
    OrderStatus,
    ShipOrder,
    UpdateShippingAddress,
)
from orders.product import AddProduct
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
from orders.service import service
from orders.values import Address, OrderLine

R = TypeVar("R")
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")


class App:
    """A runtime plus the log position of the last command sent through it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.last = LOG_START

    async def send(self, command: Command) -> None:
        result = await self.runtime.command_bus.dispatch(command)
        if result.position is not None:
            self.last = max(self.last, result.position)

    async def settle(self) -> None:
        """Catch every projection up to the last command sent (bounded, then fail)."""
        await settle(self.runtime, self.last)

    async def ask(self, query: Query, result: type[R]) -> R:
        await self.settle()
        return await self.runtime.query_bus.dispatch(query, result)


async def settle(runtime: Runtime, position: LogPosition, timeout: float = 30.0) -> None:
    """Catch every projection up to ``position``.

    On PostgreSQL the log is read below the cluster-wide xid fence, so one ``catch_up`` can
    stop short of an event that is committed but not yet readable: keep going until every
    checkpoint has passed ``position``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for runner in runtime.runners.values():
        while (checkpoint := await runner.catch_up()) < position:
            assert loop.time() < deadline, f"{runner.name} stuck at {checkpoint}"
            await runtime.backend.store.wait_for_events(checkpoint, 0.05)


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[App]:
    runtime = await Runtime.open(service, Settings(database_url=database_url))
    try:
        yield App(runtime)
    finally:
        await runtime.close()


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


async def customer(app: App, name: str, email: str) -> UUID:
    customer_id = uuid4()
    await app.send(
        RegisterCustomer(customer_id=customer_id, name=name, email=email, timestamp=at(0))
    )
    return customer_id


async def product(app: App, name: str, price: str, stock: int = 100_000) -> UUID:
    product_id = uuid4()
    await app.send(
        AddProduct(
            product_id=product_id,
            name=name,
            unit_price=Decimal(price),
            stock=stock,
            timestamp=at(0),
        )
    )
    return product_id


def line(product_id: UUID, quantity: int, price: str) -> OrderLine:
    return OrderLine(product_id=product_id, quantity=quantity, unit_price=Decimal(price))


async def order(app: App, customer_id: UUID, lines: list[OrderLine], minutes: int = 1) -> UUID:
    order_id = uuid4()
    await app.send(
        CreateOrder(
            order_id=order_id,
            customer_id=customer_id,
            items=lines,
            shipping_address=ADDRESS,
            timestamp=at(minutes),
        )
    )
    return order_id


async def test_order_view_has_items_customer_name_email_and_address(app: App) -> None:
    alice = await customer(app, "Alice Liddell", "alice@example.com")
    pen = await product(app, "Fountain Pen", "19.99")
    ink = await product(app, "Blue Ink", "0.10")
    order_id = await order(app, alice, [line(pen, 2, "19.99"), line(ink, 3, "0.10")])

    view: OrderView = await app.ask(GetOrderById(order_id=order_id), OrderView)

    assert view.id == order_id
    assert view.customer_id == alice
    assert (view.customer_name, view.customer_email) == ("Alice Liddell", "alice@example.com")
    assert view.status is OrderStatus.PENDING
    assert view.total_amount == Decimal("40.28")
    assert view.item_count == 2
    assert [(i.product_id, i.product_name, i.quantity) for i in view.items] == [
        (pen, "Fountain Pen", 2),
        (ink, "Blue Ink", 3),
    ]
    assert [(i.unit_price, i.subtotal) for i in view.items] == [
        (Decimal("19.99"), Decimal("39.98")),
        (Decimal("0.10"), Decimal("0.30")),
    ]
    assert view.shipping_address == ADDRESS
    assert view.created_at == view.updated_at == at(1)


async def test_order_view_follows_item_address_and_status_changes(app: App) -> None:
    bob = await customer(app, "Bob", "bob@example.com")
    pen = await product(app, "Pen", "1.50")
    order_id = await order(app, bob, [line(pen, 1, "1.50")])
    await app.send(AddOrderItem(order_id=order_id, item=line(pen, 4, "1.25"), timestamp=at(2)))
    moved = Address(street="2 Elm St", city="Shelbyville", postal_code="999", country="US")
    await app.send(
        UpdateShippingAddress(order_id=order_id, shipping_address=moved, timestamp=at(3))
    )
    await app.send(ShipOrder(order_id=order_id, timestamp=at(4)))

    view: OrderView = await app.ask(GetOrderById(order_id=order_id), OrderView)

    assert view.status is OrderStatus.SHIPPED
    assert view.total_amount == Decimal("6.50")
    assert view.item_count == 2
    assert [(i.quantity, i.unit_price) for i in view.items] == [
        (1, Decimal("1.50")),
        (4, Decimal("1.25")),
    ]
    assert view.shipping_address == moved
    assert (view.created_at, view.updated_at) == (at(1), at(4))


async def test_unknown_order_raises_not_found(app: App) -> None:
    with pytest.raises(NotFound):
        await app.ask(GetOrderById(order_id=uuid4()), OrderView)


async def test_orders_by_customer_pages_newest_first_with_status_filter(
    app: App,
) -> None:
    carol = await customer(app, "Carol", "carol@example.com")
    other = await customer(app, "Dave", "dave@example.com")
    pen = await product(app, "Pen", "2.00")
    ids = [await order(app, carol, [line(pen, 1, "2.00")], minutes=i) for i in range(1, 8)]
    await order(app, other, [line(pen, 1, "2.00")], minutes=9)
    await app.send(CancelOrder(order_id=ids[0], timestamp=at(10)))
    await app.send(ShipOrder(order_id=ids[1], timestamp=at(10)))

    first: OrderSummaryPage = await app.ask(
        GetOrdersByCustomer(customer_id=carol, page=1, page_size=3), OrderSummaryPage
    )
    last: OrderSummaryPage = await app.ask(
        GetOrdersByCustomer(customer_id=carol, page=3, page_size=3), OrderSummaryPage
    )
    pending: OrderSummaryPage = await app.ask(
        GetOrdersByCustomer(customer_id=carol, status=OrderStatus.PENDING, page_size=10),
        OrderSummaryPage,
    )

    assert first.total == last.total == 7
    assert [o.id for o in first.items] == ids[::-1][:3]
    assert [o.id for o in last.items] == [ids[0]]
    assert last.items[0].status is OrderStatus.CANCELLED
    assert all(o.customer_name == "Carol" for o in first.items)
    assert first.items[0].total_amount == Decimal("2.00")
    assert (pending.total, [o.id for o in pending.items]) == (5, ids[:1:-1])


async def test_search_finds_orders_by_product_customer_and_email(app: App) -> None:
    erin = await customer(app, "Erin Hannon", "erin@dunder.example")
    kevin = await customer(app, "Kevin Malone", "kevin@chili.example")
    paper = await product(app, "Premium Paper", "5.00")
    chili = await product(app, "Famous Chili", "3.00")
    erins = await order(app, erin, [line(paper, 1, "5.00")])
    kevins = await order(app, kevin, [line(chili, 1, "3.00")], minutes=2)
    await app.send(AddOrderItem(order_id=erins, item=line(chili, 1, "3.00"), timestamp=at(3)))

    async def found(q: str, **filters: Any) -> set[UUID]:
        page: OrderSummaryPage = await app.ask(SearchOrders(q=q, **filters), OrderSummaryPage)
        assert page.total == len(page.items)
        return {o.id for o in page.items}

    assert await found("paper") == {erins}
    assert await found("chili") == {erins, kevins}
    assert await found("kevin malone") == {kevins}
    assert await found("hannon") == {erins}
    assert await found("erin@dunder.example") == {erins}
    assert await found("dunder") == {erins}
    assert await found("prem") == {erins}
    assert await found("FAMOUS") == {erins, kevins}
    assert await found("chili paper") == {erins}
    assert await found("nothing-like-this") == set()
    assert await found("") == {erins, kevins}
    assert await found("chili", customer_id=kevin) == {kevins}
    assert await found("chili", status=OrderStatus.SHIPPED) == set()


@pytest.mark.parametrize(
    "hostile",
    [
        '"',
        '""',
        "*",
        "NEAR(",
        "OR",
        "a OR b",
        "AND NOT",
        "\x00",
        "chi\x00li",
        "'; DROP TABLE order_search_orders; --",
        "(((",
        "col:chili",
        "^chili",
        "chili*",
        "!&|:*'",
        '"chili" NEAR/2 "x"',
        "-",
        "ü",
    ],
)
async def test_hostile_search_text_never_raises(app: App, hostile: str) -> None:
    dana = await customer(app, "Dana", "dana@example.com")
    chili = await product(app, "Chili", "3.00")
    order_id = await order(app, dana, [line(chili, 1, "3.00")])

    page: OrderSummaryPage = await app.ask(SearchOrders(q=hostile), OrderSummaryPage)

    assert page.total == len(page.items)
    assert {o.id for o in page.items} <= {order_id}
    still: OrderSummaryPage = await app.ask(SearchOrders(q="chili"), OrderSummaryPage)
    assert [o.id for o in still.items] == [order_id]


async def test_search_sorts_by_allowed_columns_and_pages(app: App) -> None:
    fay = await customer(app, "Fay", "fay@example.com")
    pen = await product(app, "Pen", "1.00")
    # created in order a, b, c; totals b < c < a; updated last: a (shipped later)
    a = await order(app, fay, [line(pen, 9, "1.00")], minutes=1)
    b = await order(app, fay, [line(pen, 1, "1.00")], minutes=2)
    c = await order(app, fay, [line(pen, 5, "1.00")], minutes=3)
    await app.send(ShipOrder(order_id=a, timestamp=at(10)))

    async def ordered(sort_by: str, sort_order: str, q: str = "") -> list[UUID]:
        query = SearchOrders.model_validate({"q": q, "sort_by": sort_by, "sort_order": sort_order})
        page: OrderSummaryPage = await app.ask(query, OrderSummaryPage)
        return [o.id for o in page.items]

    for q in ("", "pen"):
        assert await ordered("created_at", "desc", q) == [c, b, a]
        assert await ordered("created_at", "asc", q) == [a, b, c]
        assert await ordered("updated_at", "desc", q) == [a, c, b]
        assert await ordered("total_amount", "asc", q) == [b, c, a]
        assert await ordered("total_amount", "desc", q) == [a, c, b]

    second: OrderSummaryPage = await app.ask(
        SearchOrders(q="pen", page=2, page_size=2), OrderSummaryPage
    )
    assert (second.total, [o.id for o in second.items]) == (3, [a])
    with pytest.raises(ValueError, match="sort_by"):
        SearchOrders.model_validate({"sort_by": "customer_id; DROP TABLE x"})


async def test_statistics_are_exact_and_exclude_cancelled_revenue(app: App) -> None:
    gus = await customer(app, "Gus", "gus@example.com")
    dime = await product(app, "Dime Candy", "0.10")
    book = await product(app, "Book", "19.99")
    lamp = await product(app, "Lamp", "7.00")
    ids = []
    for i in range(30):
        lines = [line(dime, 1, "0.10")] * 7 + [line(book, 1, "19.99")] * 3
        ids.append(await order(app, gus, lines, minutes=i))
    cancelled = await order(app, gus, [line(lamp, 50, "7.00")], minutes=40)
    await app.send(CancelOrder(order_id=cancelled, timestamp=at(41)))
    await app.send(ShipOrder(order_id=ids[0], timestamp=at(42)))

    stats: OrderStatistics = await app.ask(GetOrderStatistics(), OrderStatistics)

    per_order = Decimal("0.10") * 7 + Decimal("19.99") * 3
    assert stats.total_orders == 31
    assert stats.total_revenue == per_order * 30 == Decimal("1820.10")
    assert stats.average_order_value == Decimal("60.67")
    assert stats.orders_by_status == {"pending": 29, "shipped": 1, "cancelled": 1}
    assert [(p.product_id, p.product_name, p.quantity, p.revenue) for p in stats.top_products] == [
        (dime, "Dime Candy", 210, Decimal("21.00")),
        (book, "Book", 90, Decimal("1799.10")),
    ]


async def test_statistics_filter_by_customer_and_inclusive_date_range(app: App) -> None:
    hal = await customer(app, "Hal", "hal@example.com")
    ivy = await customer(app, "Ivy", "ivy@example.com")
    pen = await product(app, "Pen", "1.00")
    for minutes in (10, 20, 30, 40):
        await order(app, hal, [line(pen, minutes, "1.00")], minutes=minutes)
    await order(app, ivy, [line(pen, 1, "1.00")], minutes=20)

    async def stats(**filters: Any) -> OrderStatistics:
        result: OrderStatistics = await app.ask(GetOrderStatistics(**filters), OrderStatistics)
        return result

    ranged = await stats(customer_id=hal, from_date=at(20), to_date=at(30))
    assert (ranged.total_orders, ranged.total_revenue) == (2, Decimal("50.00"))
    assert ranged.average_order_value == Decimal("25.00")
    assert [p.quantity for p in ranged.top_products] == [50]
    from_only = await stats(from_date=at(20))
    assert (from_only.total_orders, from_only.total_revenue) == (4, Decimal("91.00"))
    assert (await stats(customer_id=ivy)).total_revenue == Decimal("1.00")
    naive = await stats(to_date=at(10).replace(tzinfo=None))
    assert naive.total_orders == 1
    empty = await stats(from_date=at(1000))
    assert (empty.total_orders, empty.total_revenue, empty.average_order_value) == (
        0,
        Decimal("0.00"),
        Decimal("0.00"),
    )
    assert empty.orders_by_status == {"pending": 0, "shipped": 0, "cancelled": 0}
    assert empty.top_products == []


async def test_customer_summary_counts_and_spending(app: App) -> None:
    jo = await customer(app, "Jo", "jo@example.com")
    pen = await product(app, "Pen", "0.10")
    kept = await order(app, jo, [line(pen, 3, "0.10")], minutes=5)
    shipped = await order(app, jo, [line(pen, 1, "0.10")], minutes=6)
    cancelled = await order(app, jo, [line(pen, 100, "0.10")], minutes=7)
    await app.send(AddOrderItem(order_id=kept, item=line(pen, 2, "0.10"), timestamp=at(8)))
    await app.send(ShipOrder(order_id=shipped, timestamp=at(9)))
    await app.send(CancelOrder(order_id=cancelled, timestamp=at(9)))
    newcomer = await customer(app, "New", "new@example.com")

    summary: CustomerSummary = await app.ask(GetCustomerSummary(customer_id=jo), CustomerSummary)
    fresh: CustomerSummary = await app.ask(
        GetCustomerSummary(customer_id=newcomer), CustomerSummary
    )

    assert (summary.name, summary.email, summary.total_orders) == ("Jo", "jo@example.com", 3)
    assert summary.total_spent == Decimal("0.60")
    assert summary.orders_by_status == {"pending": 1, "shipped": 1, "cancelled": 1}
    assert (summary.first_order_at, summary.last_order_at) == (at(5), at(7))
    assert (fresh.total_orders, fresh.total_spent) == (0, Decimal("0.00"))
    assert (fresh.first_order_at, fresh.last_order_at) == (None, None)
    with pytest.raises(NotFound):
        await app.ask(GetCustomerSummary(customer_id=uuid4()), CustomerSummary)
