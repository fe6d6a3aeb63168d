"""The orders projections as pure functions: events in, SQL statements out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

import orders.read_models.customer_summary as cs
import orders.read_models.order_detail as od
import orders.read_models.order_search as search
import orders.read_models.order_statistics as stats
from cqrskit.messages import DomainEvent
from cqrskit.projections.projection import Projection
from cqrskit.read_models.protocol import Statement
from orders.customer import CustomerRegistered
from orders.order import (
    OrderCancelled,
    OrderCreated,
    OrderItemAdded,
    OrderShipped,
    ShippingAddressUpdated,
)
from orders.product import ProductAdded, ProductRestocked, StockReleased, StockReserved
from orders.read_models import projections
from orders.read_models._common import from_cents, lines_total, mean_money, timestamp
from orders.values import Address, OrderLine

AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
STAMP = "2024-05-06T07:08:09.123456+00:00"
CUSTOMER = str(uuid4())
ORDER = str(uuid4())
PEN = uuid4()
INK = uuid4()
ADDRESS = Address(street="1 Main St", city="Springfield", postal_code="12345", country="US")
LINES = [
    OrderLine(product_id=PEN, quantity=3, unit_price=Decimal("19.99")),
    OrderLine(product_id=INK, quantity=1, unit_price=Decimal("0.10")),
]


def events() -> list[DomainEvent]:
    """One event of every type the orders log holds, in a plausible order."""
    return [
        CustomerRegistered(
            customer_id=CUSTOMER, name="Ada", email="ada@example.com", occurred_at=AT
        ),
        ProductAdded(
            product_id=str(PEN), name="Pen", unit_price=Decimal("19.99"), stock=9, occurred_at=AT
        ),
        ProductRestocked(product_id=str(PEN), quantity=5, occurred_at=AT),
        StockReserved(product_id=str(PEN), order_id=ORDER, quantity=3, occurred_at=AT),
        OrderCreated(
            order_id=ORDER,
            customer_id=CUSTOMER,
            items=LINES,
            shipping_address=ADDRESS,
            occurred_at=AT,
        ),
        OrderItemAdded(order_id=ORDER, item=LINES[1], occurred_at=AT),
        ShippingAddressUpdated(order_id=ORDER, shipping_address=ADDRESS, occurred_at=AT),
        OrderShipped(order_id=ORDER, occurred_at=AT),
        OrderCancelled(order_id=ORDER, reason="no", occurred_at=AT),
        StockReleased(product_id=str(PEN), order_id=ORDER, quantity=3, occurred_at=AT),
    ]


def by_name() -> dict[str, Projection]:
    return {p.name: p for p in projections()}


def test_projections_are_five_fresh_instances_with_distinct_names() -> None:
    first, second = projections(), projections()
    assert [p.name for p in first] == [
        "order_detail",
        "customer_orders",
        "order_search",
        "order_statistics",
        "customer_summary",
    ]
    assert all(a is not b for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("projection", projections(), ids=lambda p: p.name)
def test_every_table_is_prefixed_by_its_projection_and_emptied_by_truncate(
    projection: Projection,
) -> None:
    created = {
        match
        for ddl in projection.schema
        for text in (ddl.postgres, ddl.sqlite)
        for match in re.findall(r"CREATE (?:VIRTUAL )?TABLE IF NOT EXISTS (\w+)", text)
    }
    emptied = {
        match
        for statement in projection.truncate
        for text in (statement.postgres, statement.sqlite)
        for match in re.findall(r"DELETE FROM (\w+)|INSERT INTO (\w+)", text)
        for match in match
        if match
    }
    assert created
    assert all(table.startswith(projection.name + "_") for table in created | emptied)
    assert created == emptied


@pytest.mark.parametrize("projection", projections(), ids=lambda p: p.name)
def test_sql_texts_use_each_dialects_placeholders(projection: Projection) -> None:
    texts = [*projection.schema, *projection.truncate]
    texts += [s.sql for event in events() for s in projection.apply(event)]
    assert all("?" not in t.postgres and "$" not in t.sqlite for t in texts)


@pytest.mark.parametrize("projection", projections(), ids=lambda p: p.name)
def test_handlers_are_pure_and_bind_only_plain_values(projection: Projection) -> None:
    for event in events():
        before = event.model_dump()
        first = list(projection.apply(event))
        assert first == list(projection.apply(event))
        assert event.model_dump() == before
        for statement in first:
            assert isinstance(statement, Statement)
            assert all(p is None or type(p) in (str, int) for p in statement.params)


@pytest.mark.parametrize("projection", projections(), ids=lambda p: p.name)
def test_unhandled_events_yield_nothing(projection: Projection) -> None:
    for event in events()[2:4] + events()[-1:]:
        assert event.event_type not in projection.handled_types
        assert list(projection.apply(event)) == []


def test_handled_types_per_projection() -> None:
    order_events = {"OrderCreated", "OrderItemAdded", "OrderShipped", "OrderCancelled"}
    assert {n: p.handled_types for n, p in by_name().items()} == {
        "order_detail": order_events
        | {"CustomerRegistered", "ProductAdded", "ShippingAddressUpdated"},
        "customer_orders": order_events | {"CustomerRegistered"},
        "order_search": order_events | {"CustomerRegistered", "ProductAdded"},
        "order_statistics": order_events | {"ProductAdded"},
        "customer_summary": order_events | {"CustomerRegistered"},
    }


def test_order_created_becomes_an_order_row_and_one_row_per_line() -> None:
    created = events()[4]
    statements = list(by_name()["order_detail"].apply(created))
    assert statements == [
        od.CREATE_ORDER(
            ORDER,
            CUSTOMER,
            "pending",
            5997 + 10,
            2,
            "1 Main St",
            "Springfield",
            "12345",
            "US",
            STAMP,
            created.version,
        ),
        od.INSERT_LINE(ORDER, 1, str(PEN), 3, 1999),
        od.INSERT_LINE(ORDER, 2, str(INK), 1, 10),
    ]


def test_order_item_added_appends_a_line_and_adds_to_the_total() -> None:
    added = events()[5]
    assert list(by_name()["order_detail"].apply(added)) == [
        od.APPEND_LINE(ORDER, str(INK), 1, 10),
        od.ADD_TO_TOTAL(ORDER, 10, STAMP, added.version),
    ]
    assert list(by_name()["order_statistics"].apply(added)) == [
        stats.ADD_TO_TOTAL(ORDER, 10),
        stats.ADD_LINE(ORDER, str(INK), 1, 10),
    ]


def test_status_changes_update_status_and_time() -> None:
    shipped, cancelled = events()[7], events()[8]
    detail = by_name()["order_detail"]
    assert list(detail.apply(shipped)) == [od.SET_STATUS(ORDER, "shipped", STAMP, shipped.version)]
    assert list(detail.apply(cancelled)) == [
        od.SET_STATUS(ORDER, "cancelled", STAMP, cancelled.version)
    ]
    summary = by_name()["customer_summary"]
    assert list(summary.apply(cancelled)) == [
        cs.COUNT_CANCELLED(ORDER, "pending"),
        cs.SET_STATUS(ORDER, "pending", "cancelled"),
    ]


def test_customer_registered_feeds_each_projections_own_lookup() -> None:
    registered = events()[0]
    assert list(by_name()["order_detail"].apply(registered)) == [
        od.PUT_CUSTOMER(CUSTOMER, "Ada", "ada@example.com")
    ]
    assert list(by_name()["order_search"].apply(registered)) == [
        search.PUT_CUSTOMER(CUSTOMER, "Ada", "Ada ada@example.com ada example com")
    ]


def test_timestamps_are_normalised_to_fixed_width_utc_text() -> None:
    plus_two = AT.replace(microsecond=0).astimezone(timezone(timedelta(hours=2)))
    assert timestamp(plus_two) == "2024-05-06T07:08:09.000000+00:00"
    assert timestamp(datetime(2024, 1, 1)) == "2024-01-01T00:00:00.000000+00:00"
    shipped = OrderShipped(order_id=ORDER, occurred_at=plus_two)
    [statement] = by_name()["customer_orders"].apply(shipped)
    assert statement.params[2] == "2024-05-06T07:08:09.000000+00:00"


def test_money_is_exact_integer_cents() -> None:
    assert lines_total(LINES) == 6007
    assert sum([from_cents(1999)] * 3) == Decimal("59.97")
    assert from_cents(None) == Decimal("0.00")
    assert from_cents(Decimal(123456789012345)) == Decimal("1234567890123.45")
    assert mean_money(1000, 3) == Decimal("3.33")
    assert mean_money(1001, 2) == Decimal("5.01")
    assert mean_money(5, 0) == Decimal("0.00")


_FTS5 = re.compile(r'"[^\W_]+"\*( AND "[^\W_]+"\*)*')
_TSQUERY = re.compile(r"'[^\W_]+':\*( & '[^\W_]+':\*)*")


@pytest.mark.parametrize(
    ("text", "fts5", "ts"),
    [
        ("Blue  pen", '"blue"* AND "pen"*', "'blue':* & 'pen':*"),
        ("ada@example.com", '"ada"* AND "example"* AND "com"*', None),
        ('"', None, None),
        ("NEAR( OR *", '"near"* AND "or"*', "'near':* & 'or':*"),
        ("a\x00b", '"a"* AND "b"*', "'a':* & 'b':*"),
        ("", None, None),
    ],
)
def test_search_text_becomes_quoted_prefix_terms(
    text: str, fts5: str | None, ts: str | None
) -> None:
    assert search.fts5_query(text) == fts5
    if ts is not None:
        assert search.tsquery(text) == ts


@given(st.text(max_size=200))
def test_any_search_text_yields_only_quoted_word_terms(text: str) -> None:
    fts5, ts = search.fts5_query(text), search.tsquery(text)
    assert (fts5 is None) == (ts is None) == (search.word_tokens(text) == [])
    if fts5 is not None and ts is not None:
        assert _FTS5.fullmatch(fts5)
        assert _TSQUERY.fullmatch(ts)
