"""Consistency waits and cache rules, without I/O: the query bus, the checkpoint watch, tags."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

import pytest

from cqrskit.consistency import CheckpointWatch
from cqrskit.messages import DomainEvent, LogPosition, Query
from cqrskit.middleware import Next
from cqrskit.projections.projection import Projection
from cqrskit.query_bus import QueryBus, consistency_requirement
from cqrskit.read_models.protocol import CheckpointRow, ReadModelStore
from orders.customer import CustomerRegistered
from orders.order import OrderCancelled, OrderShipped
from orders.queries import GetOrderById
from orders.read_models import projections, register_query_handlers
from orders.read_models.order_detail import OrderDetailProjection

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class CountOrders(Query):
    status: str = "pending"


async def count_orders(query: CountOrders) -> int:
    return 3


class RecordingWaiter:
    def __init__(self, reached: bool) -> None:
        self.reached = reached
        self.calls: list[tuple[tuple[str, ...], LogPosition, float]] = []

    async def wait(self, names: Collection[str], position: LogPosition, timeout: float) -> bool:
        self.calls.append((tuple(names), position, timeout))
        return self.reached


async def test_consistent_dispatch_waits_for_what_the_query_reads() -> None:
    waiter = RecordingWaiter(reached=True)
    bus = QueryBus(checkpoints=waiter, max_wait=5.0)
    bus.register(CountOrders, count_orders, reads=("order_summary",))
    answer = await bus.dispatch_consistent(CountOrders(), int, LogPosition(0, 7))
    assert answer.result == 3
    assert answer.stale is False
    assert waiter.calls == [(("order_summary",), LogPosition(0, 7), 5.0)]


async def test_a_wait_that_runs_out_answers_stale() -> None:
    bus = QueryBus(checkpoints=RecordingWaiter(reached=False))
    bus.register(CountOrders, count_orders)
    answer = await bus.dispatch_consistent(CountOrders(), int, LogPosition(0, 7))
    assert answer == (3, True)


@pytest.mark.parametrize(("asked", "used"), [(None, 2.0), (0.5, 0.5), (60.0, 2.0), (-1.0, 0.0)])
async def test_a_caller_may_ask_for_a_shorter_wait_never_a_longer_one(
    asked: float | None, used: float
) -> None:
    waiter = RecordingWaiter(reached=True)
    bus = QueryBus(checkpoints=waiter, max_wait=2.0)
    bus.register(CountOrders, count_orders)
    await bus.dispatch_consistent(CountOrders(), int, LogPosition(0, 1), timeout=asked)
    assert waiter.calls[0][2] == used


async def test_middleware_sees_the_position_the_query_waited_for() -> None:
    seen: list[LogPosition | None] = []

    async def spy(query: Any, call_next: Next) -> Any:
        seen.append(consistency_requirement())
        return await call_next(query)

    bus = QueryBus([spy], checkpoints=RecordingWaiter(reached=True))
    bus.register(CountOrders, count_orders)
    await bus.dispatch(CountOrders(), int)
    await bus.dispatch_consistent(CountOrders(), int, LogPosition(3, 4))
    await bus.dispatch(CountOrders(), int)
    assert seen == [None, LogPosition(3, 4), None]


async def test_consistent_dispatch_without_a_waiter_is_refused() -> None:
    bus = QueryBus()
    bus.register(CountOrders, count_orders)
    with pytest.raises(RuntimeError, match="no checkpoint waiter"):
        await bus.dispatch_consistent(CountOrders(), int, LogPosition(0, 1))


class Stored:
    def __init__(self) -> None:
        self.rows: list[CheckpointRow] = []
        self.reads = 0

    async def __call__(self) -> list[CheckpointRow]:
        self.reads += 1
        return list(self.rows)


class Search(Projection):
    name = "order_search"


async def test_watch_is_woken_by_a_local_runner_commit() -> None:
    stored = Stored()
    watch = CheckpointWatch(stored, ["order_detail", "order_search"])
    watch.attach(["order_detail", "order_search"])
    detail = OrderDetailProjection()
    assert not await watch.wait(["order_detail"], LogPosition(0, 5), 0)
    await watch.committed(detail, LogPosition(0, 5), [])
    assert await watch.wait(["order_detail"], LogPosition(0, 5), 0)
    assert await watch.wait(["order_detail"], LogPosition(0, 4), 0)
    # No names: every projection the watch knows.
    assert not await watch.wait([], LogPosition(0, 5), 0)
    await watch.committed(Search(), LogPosition(0, 9), [])
    assert await watch.wait([], LogPosition(0, 5), 0)
    await watch.rewound(detail)
    assert not await watch.wait(["order_detail"], LogPosition(0, 1), 0)
    await watch.close()


async def test_watch_reads_the_table_for_projections_run_elsewhere() -> None:
    stored = Stored()
    watch = CheckpointWatch(stored, ["order_detail"], poll_interval=0.001)
    stored.rows = [CheckpointRow("order_detail", LogPosition(0, 2), None)]
    assert not await watch.wait(["order_detail"], LogPosition(0, 3), 0)
    stored.rows = [CheckpointRow("order_detail", LogPosition(0, 3), None)]
    assert await watch.wait(["order_detail"], LogPosition(0, 3), 30)
    assert stored.reads >= 2
    await watch.close()


def test_order_detail_tags_match_the_cached_query_tags() -> None:
    bus = QueryBus()
    register_query_handlers(bus, cast(ReadModelStore, object()))
    registration = bus.registration(GetOrderById)
    assert registration is not None
    assert registration.cache is not None
    assert registration.reads == ("order_detail",)
    order_id = uuid4()
    query_tags = set(registration.cache.tags(GetOrderById(order_id=order_id)))
    projection = OrderDetailProjection()
    events: list[DomainEvent] = [
        OrderShipped(order_id=str(order_id), occurred_at=NOW),
        OrderCancelled(order_id=str(order_id), reason="", occurred_at=NOW),
    ]
    for event in events:
        assert set(projection.cache_tags(event)) == query_tags
    customer = CustomerRegistered(
        customer_id=str(uuid4()), name="Ada", email="ada@example.com", occurred_at=NOW
    )
    assert list(projection.cache_tags(customer)) == []


def test_every_query_reads_projections_that_exist() -> None:
    bus = QueryBus()
    register_query_handlers(bus, cast(ReadModelStore, object()))
    names = {p.name for p in projections()}
    for registration in bus.registrations().values():
        assert registration.reads
        assert set(registration.reads) <= names


def test_a_projection_without_exact_tags_invalidates_everything() -> None:
    class Plain(Projection):
        name = "plain"

    event = OrderShipped(order_id=str(uuid4()), occurred_at=NOW)
    assert list(Plain().cache_tags(event)) == ["*"]
