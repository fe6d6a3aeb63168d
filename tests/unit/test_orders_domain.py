"""The orders rules, as given/when/then specifications (and the helper's own behaviour)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from cqrskit.errors import InvalidState, NotFound, RuleViolation
from cqrskit.messages import Command, DomainEvent
from cqrskit.middleware import Next, retry_on_conflict
from cqrskit.repository import AggregateCache
from cqrskit.testing import CommandHarness, assert_events, given
from orders.customer import CustomerRegistered, RegisterCustomer
from orders.handlers import AlreadyExists, register_command_handlers
from orders.order import (
    AddOrderItem,
    CancelOrder,
    CreateOrder,
    Order,
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderShipped,
    OrderStatus,
    ShipOrder,
    ShippingAddressUpdated,
    UpdateShippingAddress,
)
from orders.product import (
    AddProduct,
    InsufficientStock,
    Product,
    ProductAdded,
    ProductRestocked,
    StockReleased,
    StockReserved,
)
from orders.values import MAX_ITEMS_PER_ORDER, Address, OrderLine

NOW = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ORDER = "7d4f3c1e-0000-4000-8000-000000000001"
CUSTOMER = "7d4f3c1e-0000-4000-8000-000000000002"
PRODUCT = UUID("7d4f3c1e-0000-4000-8000-000000000003")
OTHER_PRODUCT = UUID("7d4f3c1e-0000-4000-8000-000000000004")
HOME = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")
WORK = Address(street="9 Side Rd", city="Shelbyville", postal_code="54321", country="US")


def line(quantity: int = 1, price: str = "9.99", product: UUID = PRODUCT) -> OrderLine:
    return OrderLine(product_id=product, quantity=quantity, unit_price=Decimal(price))


CREATED = OrderCreated(
    order_id=ORDER, customer_id=CUSTOMER, items=[line(2)], shipping_address=HOME, occurred_at=NOW
)
SHIPPED = OrderShipped(order_id=ORDER, occurred_at=NOW)
CANCELLED = OrderCancelled(order_id=ORDER, reason="changed my mind", occurred_at=NOW)
PRODUCT_ADDED = ProductAdded(
    product_id=str(PRODUCT), name="Widget", unit_price=Decimal("9.99"), stock=5, occurred_at=NOW
)


def order_given(*history: DomainEvent) -> list[DomainEvent]:
    return [CREATED, *history]


# Orders.


def test_create_order_raises_order_created() -> None:
    given(Order, aggregate_id=ORDER).when(
        lambda _: Order.create(ORDER, CUSTOMER, [line(2)], HOME, at=NOW)
    ).then([CREATED])


def test_pending_order_ships() -> None:
    order = given(Order, [CREATED], aggregate_id=ORDER).when(lambda o: o.ship(at=LATER))
    shipped = order.then([OrderShipped(order_id=ORDER, occurred_at=LATER)])
    assert shipped.status is OrderStatus.SHIPPED
    assert shipped.version == 2
    assert shipped.loaded_version == 1


def test_pending_order_takes_items() -> None:
    added = line(3, "1.50", OTHER_PRODUCT)
    order = (
        given(Order, [CREATED], aggregate_id=ORDER)
        .when(lambda o: o.add_item(added, at=LATER))
        .then([OrderItemAdded(order_id=ORDER, item=added, occurred_at=LATER)])
    )
    assert order.items == [line(2), added]


def test_pending_order_changes_address() -> None:
    order = (
        given(Order, [CREATED], aggregate_id=ORDER)
        .when(lambda o: o.update_shipping_address(WORK, at=LATER))
        .then([ShippingAddressUpdated(order_id=ORDER, shipping_address=WORK, occurred_at=LATER)])
    )
    assert order.shipping_address == WORK


def test_pending_order_cancels() -> None:
    given(Order, [CREATED], aggregate_id=ORDER).when(lambda o: o.cancel("too slow", at=LATER)).then(
        [OrderCancelled(order_id=ORDER, reason="too slow", occurred_at=LATER)]
    )


def test_shipped_order_cannot_be_cancelled() -> None:
    error = (
        given(Order, order_given(SHIPPED), aggregate_id=ORDER)
        .when(lambda o: o.cancel("late", at=LATER))
        .then_raises(InvalidState)
    )
    assert "shipped" in str(error)


def test_cancelled_order_cannot_ship() -> None:
    given(Order, order_given(CANCELLED), aggregate_id=ORDER).when(
        lambda o: o.ship(at=LATER)
    ).then_raises(InvalidState, match="cancelled")


def test_cancelled_order_cannot_be_cancelled_again() -> None:
    given(Order, order_given(CANCELLED), aggregate_id=ORDER).when(
        lambda o: o.cancel("again", at=LATER)
    ).then_raises(InvalidState)


def test_shipped_order_cannot_ship_again() -> None:
    given(Order, order_given(SHIPPED), aggregate_id=ORDER).when(
        lambda o: o.ship(at=LATER)
    ).then_raises(InvalidState)


@pytest.mark.parametrize("ended", [SHIPPED, CANCELLED], ids=["shipped", "cancelled"])
def test_only_pending_orders_take_items(ended: DomainEvent) -> None:
    given(Order, order_given(ended), aggregate_id=ORDER).when(
        lambda o: o.add_item(line(), at=LATER)
    ).then_raises(InvalidState, match="add items")


@pytest.mark.parametrize("ended", [SHIPPED, CANCELLED], ids=["shipped", "cancelled"])
def test_only_pending_orders_change_address(ended: DomainEvent) -> None:
    given(Order, order_given(ended), aggregate_id=ORDER).when(
        lambda o: o.update_shipping_address(WORK, at=LATER)
    ).then_raises(InvalidState, match="address")


def test_order_holds_at_most_the_item_limit() -> None:
    full = OrderCreated(
        order_id=ORDER,
        customer_id=CUSTOMER,
        items=[line() for _ in range(MAX_ITEMS_PER_ORDER)],
        shipping_address=HOME,
        occurred_at=NOW,
    )
    given(Order, [full], aggregate_id=ORDER).when(
        lambda o: o.add_item(line(), at=LATER)
    ).then_raises(InvalidState)


# Money.


def test_order_total_is_exact_decimal() -> None:
    order = Order.create(
        ORDER, CUSTOMER, [line(3, "0.10"), line(1, "0.20"), line(7, "19.99")], HOME, at=NOW
    )
    assert order.total_amount == Decimal("140.43")
    assert str(order.total_amount) == "140.43"
    assert isinstance(order.total_amount, Decimal)
    assert line(3, "0.10").subtotal == Decimal("0.30")  # 0.1 * 3 != 0.3 in floats


@pytest.mark.parametrize("price", ["0.001", "0", "-1.00", "1000000000.01", "NaN", "Infinity"])
def test_money_rejects_out_of_range_or_sub_cent_prices(price: str) -> None:
    with pytest.raises(ValidationError):
        OrderLine(product_id=PRODUCT, quantity=1, unit_price=Decimal(price))


def test_order_lines_reject_non_positive_quantity() -> None:
    with pytest.raises(ValidationError):
        line(0)


# Products and stock.


def test_reserve_within_stock() -> None:
    product = (
        given(Product, [PRODUCT_ADDED], aggregate_id=str(PRODUCT))
        .when(lambda p: p.reserve(ORDER, 5, at=LATER))
        .then(
            [StockReserved(product_id=str(PRODUCT), order_id=ORDER, quantity=5, occurred_at=LATER)]
        )
    )
    assert product.stock == 0


def test_insufficient_stock_is_a_rule_violation() -> None:
    error = (
        given(Product, [PRODUCT_ADDED], aggregate_id=str(PRODUCT))
        .when(lambda p: p.reserve(ORDER, 6, at=LATER))
        .then_raises(InsufficientStock)
    )
    assert isinstance(error, RuleViolation)


def test_reservations_and_releases_move_stock() -> None:
    history: list[DomainEvent] = [
        PRODUCT_ADDED,
        StockReserved(product_id=str(PRODUCT), order_id=ORDER, quantity=4, occurred_at=NOW),
        ProductRestocked(product_id=str(PRODUCT), quantity=2, occurred_at=NOW),
        StockReleased(product_id=str(PRODUCT), order_id=ORDER, quantity=1, occurred_at=NOW),
    ]
    given(Product, history, aggregate_id=str(PRODUCT)).when(
        lambda p: p.reserve("other", 4, at=LATER)
    ).then(
        [StockReserved(product_id=str(PRODUCT), order_id="other", quantity=4, occurred_at=LATER)]
    )
    given(Product, history, aggregate_id=str(PRODUCT)).when(
        lambda p: p.reserve("other", 5, at=LATER)
    ).then_raises(InsufficientStock)


# The helper itself: every check can fail.


def test_then_fails_on_a_different_payload() -> None:
    outcome = given(Order, [CREATED], aggregate_id=ORDER).when(lambda o: o.ship(at=LATER))
    with pytest.raises(AssertionError, match="differs"):
        outcome.then([OrderShipped(order_id=ORDER, occurred_at=NOW)])


def test_then_fails_on_a_missing_event() -> None:
    outcome = given(Order, [CREATED], aggregate_id=ORDER).when(lambda o: o.ship(at=LATER))
    with pytest.raises(AssertionError, match="expected 0 events, got 1"):
        outcome.then([])


def test_then_fails_when_the_action_raised() -> None:
    outcome = given(Order, order_given(SHIPPED), aggregate_id=ORDER).when(lambda o: o.ship(at=NOW))
    with pytest.raises(AssertionError, match="raised InvalidState"):
        outcome.then([])


def test_then_raises_fails_without_an_error_or_with_another_error() -> None:
    ok = given(Order, [CREATED], aggregate_id=ORDER).when(lambda o: o.ship(at=LATER))
    with pytest.raises(AssertionError, match="expected InvalidState"):
        ok.then_raises(InvalidState)
    failed = given(Order, order_given(SHIPPED), aggregate_id=ORDER).when(lambda o: o.ship(at=NOW))
    with pytest.raises(AssertionError, match="expected RuleViolation"):
        failed.then_raises(RuleViolation)
    with pytest.raises(AssertionError, match="does not mention"):
        failed.then_raises(InvalidState, match="cancelled")


def test_assert_events_ignores_the_envelope_only() -> None:
    stored = SHIPPED.model_copy(update={"event_id": uuid4(), "stream_id": "order-x", "version": 9})
    assert_events([stored], [SHIPPED])
    with pytest.raises(AssertionError):
        assert_events([stored], [OrderShipped(order_id="another", occurred_at=NOW)])


# Whole commands through the real bus (in memory).


@pytest.fixture
async def shop() -> CommandHarness:
    harness = CommandHarness(register_command_handlers)
    await harness.given(
        RegisterCustomer(customer_id=UUID(CUSTOMER), name="Ada", email="ada@example.com"),
        AddProduct(product_id=PRODUCT, name="Widget", unit_price=Decimal("9.99"), stock=5),
        AddProduct(product_id=OTHER_PRODUCT, name="Gadget", unit_price=Decimal("2.50"), stock=1),
    )
    return harness


def create(*items: OrderLine, order_id: str = ORDER) -> CreateOrder:
    return CreateOrder(
        order_id=UUID(order_id),
        customer_id=UUID(CUSTOMER),
        items=list(items),
        shipping_address=HOME,
        timestamp=NOW,
    )


async def test_create_order_reserves_stock_atomically(shop: CommandHarness) -> None:
    events = await shop.dispatch(create(line(2), line(1, "2.50", OTHER_PRODUCT), line(1)))
    assert_events(
        events,
        [
            StockReserved(product_id=str(PRODUCT), order_id=ORDER, quantity=3, occurred_at=NOW),
            StockReserved(
                product_id=str(OTHER_PRODUCT), order_id=ORDER, quantity=1, occurred_at=NOW
            ),
            OrderCreated(
                order_id=ORDER,
                customer_id=CUSTOMER,
                items=[line(2), line(1, "2.50", OTHER_PRODUCT), line(1)],
                shipping_address=HOME,
                occurred_at=NOW,
            ),
        ],
    )


async def test_insufficient_stock_stores_nothing(shop: CommandHarness) -> None:
    before = await shop.log()
    with pytest.raises(InsufficientStock):
        await shop.dispatch(create(line(1), line(2, "2.50", OTHER_PRODUCT)))
    assert await shop.log() == before


async def test_unknown_customer_is_not_found(shop: CommandHarness) -> None:
    command = create(line(1)).model_copy(update={"customer_id": uuid4()})
    with pytest.raises(NotFound):
        await shop.dispatch(command)


async def test_order_id_cannot_be_reused(shop: CommandHarness) -> None:
    await shop.dispatch(create(line(1)))
    with pytest.raises(AlreadyExists):
        await shop.dispatch(create(line(1)))
    assert [type(e) for e in await shop.stream(f"product-{PRODUCT}")] == [
        ProductAdded,
        StockReserved,
    ]


async def test_cancel_releases_reserved_stock(shop: CommandHarness) -> None:
    await shop.dispatch(create(line(2), line(1, "2.50", OTHER_PRODUCT)))
    await shop.dispatch(AddOrderItem(order_id=UUID(ORDER), item=line(3), timestamp=NOW))
    events = await shop.dispatch(CancelOrder(order_id=UUID(ORDER), reason="no", timestamp=LATER))
    assert_events(
        events,
        [
            OrderCancelled(order_id=ORDER, reason="no", occurred_at=LATER),
            StockReleased(product_id=str(PRODUCT), order_id=ORDER, quantity=5, occurred_at=LATER),
            StockReleased(
                product_id=str(OTHER_PRODUCT), order_id=ORDER, quantity=1, occurred_at=LATER
            ),
        ],
    )
    product = Product.rehydrate(str(PRODUCT), await shop.stream(f"product-{PRODUCT}"))
    assert product.stock == 5
    # The released units can be ordered again.
    await shop.dispatch(create(line(5), order_id=str(uuid4())))


async def test_add_item_beyond_stock_is_rejected_and_order_unchanged(shop: CommandHarness) -> None:
    await shop.dispatch(create(line(4)))
    with pytest.raises(InsufficientStock):
        await shop.dispatch(AddOrderItem(order_id=UUID(ORDER), item=line(2), timestamp=NOW))
    assert [type(e) for e in await shop.stream(f"order-{ORDER}")] == [OrderCreated]


async def test_shipped_order_cannot_be_cancelled_through_the_bus(shop: CommandHarness) -> None:
    await shop.dispatch(create(line(1)))
    await shop.dispatch(ShipOrder(order_id=UUID(ORDER), timestamp=LATER))
    with pytest.raises(InvalidState):
        await shop.dispatch(CancelOrder(order_id=UUID(ORDER), timestamp=LATER))
    with pytest.raises(InvalidState):
        await shop.dispatch(
            UpdateShippingAddress(order_id=UUID(ORDER), shipping_address=WORK, timestamp=LATER)
        )
    events = await shop.stream(f"order-{ORDER}")
    assert [type(e) for e in events] == [OrderCreated, OrderShipped]


async def test_events_carry_command_metadata(shop: CommandHarness) -> None:
    command = create(line(1))
    events = await shop.dispatch(command)
    assert {e.metadata.causation_id for e in events} == {command.command_id}
    registered = (await shop.stream(f"customer-{CUSTOMER}"))[0]
    assert isinstance(registered, CustomerRegistered)


# A taken order id: found by the append's new-stream check, still reported before the stock.


@pytest.fixture(params=[False, True], ids=["uncached", "cached"])
async def retrying_shop(request: pytest.FixtureRequest) -> tuple[CommandHarness, list[Command]]:
    """The shop behind retry_on_conflict, with the attempts that reached the handler."""
    attempts: list[Command] = []

    async def count(command: Command, call_next: Next) -> object:
        attempts.append(command)
        return await call_next(command)

    harness = CommandHarness(register_command_handlers, [retry_on_conflict(5), count])
    if request.param:
        harness.bus.cache = AggregateCache(64)
    await harness.given(
        RegisterCustomer(customer_id=UUID(CUSTOMER), name="Ada", email="ada@example.com"),
        AddProduct(product_id=PRODUCT, name="Widget", unit_price=Decimal("9.99"), stock=5),
        create(line(1)),
    )
    attempts.clear()
    return harness, attempts


@pytest.mark.parametrize(
    "items",
    [[line(1)], [line(5)], [line(1, product=uuid4())]],
    ids=["stock-left", "too-little-stock", "unknown-product"],
)
async def test_taken_order_id_is_already_exists_before_any_other_rejection(
    retrying_shop: tuple[CommandHarness, list[Command]], items: list[OrderLine]
) -> None:
    shop, attempts = retrying_shop
    before = await shop.log()
    with pytest.raises(AlreadyExists):
        await shop.dispatch(create(*items))
    assert await shop.log() == before  # no stock reserved, nothing else stored
    assert len(attempts) == 1  # not a conflict retry_on_conflict runs again


async def test_create_order_reads_no_order_stream_unless_it_is_rejected(
    shop: CommandHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    read_stream = shop.store.read_stream

    async def counting(stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        read.append(stream_id)
        return await read_stream(stream_id, after_version=after_version)

    monkeypatch.setattr(shop.store, "read_stream", counting)
    await shop.dispatch(create(line(1)))
    assert f"order-{ORDER}" not in read
    other = str(uuid4())
    with pytest.raises(InsufficientStock):
        await shop.dispatch(create(line(9), order_id=other))
    assert read.count(f"order-{other}") == 1  # the error path asks whether the id is taken
