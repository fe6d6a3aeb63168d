"""Query bus: one handler per query type, middleware, checked result types."""

from __future__ import annotations

from typing import Any

import pytest

from cqrskit.errors import NoHandlerFoundError
from cqrskit.messages import Query
from cqrskit.middleware import Next
from cqrskit.query_bus import QueryBus


class CountOrders(Query):
    status: str = "pending"


class Unregistered(Query):
    pass


async def count_orders(query: CountOrders) -> int:
    return {"pending": 3, "shipped": 1}.get(query.status, 0)


async def test_dispatches_to_the_registered_handler() -> None:
    bus = QueryBus()
    bus.register(CountOrders, count_orders)
    assert await bus.dispatch(CountOrders(), int) == 3
    assert await bus.dispatch(CountOrders(status="shipped"), int) == 1


async def test_unregistered_query_raises_no_handler_found() -> None:
    bus = QueryBus()
    bus.register(CountOrders, count_orders)
    with pytest.raises(NoHandlerFoundError):
        await bus.dispatch(Unregistered(), int)


async def test_second_handler_for_a_type_is_refused() -> None:
    bus = QueryBus()
    bus.register(CountOrders, count_orders)
    with pytest.raises(ValueError, match="already has a handler"):
        bus.register(CountOrders, count_orders)


async def test_result_type_is_checked() -> None:
    bus = QueryBus()
    bus.register(CountOrders, count_orders)
    with pytest.raises(TypeError, match="answered int"):
        await bus.dispatch(CountOrders(), str)


async def test_middleware_runs_outermost_first_and_can_short_circuit() -> None:
    seen: list[str] = []

    def tag(name: str) -> Any:
        async def middleware(query: Any, call_next: Next) -> Any:
            seen.append(f"{name}>")
            result = await call_next(query)
            seen.append(f"<{name}")
            return result

        return middleware

    cache: dict[Query, Any] = {}

    async def caching(query: Any, call_next: Next) -> Any:
        if query not in cache:
            cache[query] = await call_next(query)
        return cache[query]

    calls = 0

    async def counting(query: CountOrders) -> int:
        nonlocal calls
        calls += 1
        return calls

    bus = QueryBus([tag("outer"), caching, tag("inner")])
    bus.register(CountOrders, counting)
    assert await bus.dispatch(CountOrders(), int) == 1
    assert await bus.dispatch(CountOrders(), int) == 1
    assert calls == 1
    assert seen == ["outer>", "inner>", "<inner", "<outer", "outer>", "<outer"]
