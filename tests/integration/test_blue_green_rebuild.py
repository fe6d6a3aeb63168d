"""Blue/green rebuilds: queries keep answering while the next generation is built beside.

A client keeps querying and commands keep arriving while every orders projection is rebuilt
into its next generation: no query fails, every answer is internally consistent, and after
the switch the new generation equals a rebuild from scratch. A bumped code version starts
the same rebuild by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest

from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.projections.generations import live_tables
from cqrskit.projections.projection import Projection
from cqrskit.projections.rebuild import BlueGreenRebuild, follow
from cqrskit.projections.runner import RebuildProgress
from cqrskit.projections.status import lag_thresholds, projection_status
from cqrskit.read_models.protocol import ReadModelStore, sql
from cqrskit.read_models.sqlite import SQLiteReadModelStore
from cqrskit.service import Runtime
from orders.queries import GetOrderById, OrderSummaryPage, OrderView, SearchOrders
from orders.read_models.order_search import OrderSearchProjection
from orders.service import service
from tests.integration.test_rebuild_equals_live import WORDS, Traffic

Dump = dict[str, list[str]]

_SQLITE_TABLES = sql(
    "SELECT name FROM sqlite_master WHERE type = 'table' AND sql NOT LIKE 'CREATE VIRTUAL%'"
)
_POSTGRES_TABLES = sql(
    "SELECT table_name AS name FROM information_schema.tables"
    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
)
_SUFFIX = re.compile(r"__g\d+$")


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(service, Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()


async def physical_tables(read_models: ReadModelStore) -> list[str]:
    listing = _SQLITE_TABLES if read_models.dialect == "sqlite" else _POSTGRES_TABLES
    return sorted(str(row["name"]) for row in await read_models.fetch(listing))


async def dump(read_models: ReadModelStore, projection: Projection) -> Dump:
    """Every row of the live generation's tables, under their logical names."""
    generation = await live_tables(read_models).generation(projection)
    out: Dump = {}
    for logical in projection.tables:
        if "_fts" in logical:
            continue
        table = logical if generation <= 1 else f"{logical}__g{generation}"
        # Names are the projection's declared constants; no value is spliced.
        query = sql(
            f"SELECT to_jsonb(t)::text AS row FROM {table} t",  # noqa: S608 - constant name
            sqlite=f"SELECT * FROM {table}",  # noqa: S608 - constant name
        )
        rows = await read_models.fetch(query)
        out[logical] = sorted(repr(sorted(row.items())) for row in rows)
    return out


async def wait_until(runtime: Runtime, position: LogPosition, timeout: float = 60.0) -> None:
    """Wait for the background runners to apply ``position``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in runtime.runners:
        while (checkpoint := await runtime.backend.read_models.checkpoint(name)) < position:
            assert loop.time() < deadline, f"{name} stuck at {checkpoint}"
            await asyncio.sleep(0.02)


async def searches(runtime: Runtime) -> dict[str, list[UUID]]:
    out = {}
    for q in [*WORDS, "ada", "example", "turing hopper"]:
        page = await runtime.query_bus.dispatch(
            SearchOrders(q=q, page_size=100, sort_by="total_amount"), OrderSummaryPage
        )
        out[q] = [o.id for o in page.items]
    return out


class Client:
    """Queries in a loop; records every failure and every inconsistent answer."""

    def __init__(self, runtime: Runtime, traffic: Traffic, rng: random.Random) -> None:
        self.runtime, self.traffic, self.rng = runtime, traffic, rng
        self.answers = 0
        self.settled = list(traffic.orders)
        self.problems: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        bus = self.runtime.query_bus
        while not stop.is_set():
            try:
                # Orders the projections had applied before the client started.
                order_id = self.rng.choice(self.settled)
                view = await bus.dispatch(GetOrderById(order_id=order_id), OrderView)
                if view.item_count != len(view.items) or view.total_amount != sum(
                    (item.subtotal for item in view.items), start=view.total_amount * 0
                ):
                    self.problems.append(f"inconsistent order {view}")
                page = await bus.dispatch(
                    SearchOrders(q=self.rng.choice(WORDS), page_size=100), OrderSummaryPage
                )
                if page.total < len(page.items):
                    self.problems.append(f"inconsistent page {page}")
                self.answers += 1
            except Exception as exc:
                self.problems.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0)


async def check_fts(runtime: Runtime, generation: int) -> None:
    read_models = runtime.backend.read_models
    if isinstance(read_models, SQLiteReadModelStore):
        fts = "order_search_fts" if generation <= 1 else f"order_search_fts__g{generation}"
        await read_models.db.write(
            # A constant name of the projection's; FTS5 checks its index against the content.
            lambda conn: conn.execute(f"INSERT INTO {fts} ({fts}) VALUES ('integrity-check')")  # noqa: S608
        )


async def test_rebuild_under_load_switches_to_an_equal_generation(runtime: Runtime) -> None:
    rng = random.Random(5150)
    traffic = Traffic(runtime, rng)
    while len(traffic.orders) < 60:
        await traffic.send_one()
    following = asyncio.Event()
    runners = [asyncio.create_task(follow(r, following)) for r in runtime.runners.values()]
    await wait_until(runtime, traffic.last)
    before = set(await physical_tables(runtime.backend.read_models))

    stop = asyncio.Event()
    client = Client(runtime, traffic, random.Random(1))
    querying = asyncio.create_task(client.run(stop))

    async def commands() -> None:
        while not stop.is_set():
            await traffic.send_one()
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(commands())
    reported: list[dict[str, Any]] = []

    async def health() -> None:
        # What /health/projections and `cqrskit projections status` show meanwhile.
        while not stop.is_set():
            for status in await projection_status(runtime, lag_thresholds(runtime.settings)):
                if status.state == "rebuilding":
                    reported.append(status.as_json())
            await asyncio.sleep(0.1)

    watching = asyncio.create_task(health())
    seen: list[RebuildProgress] = []
    for runner in runtime.runners.values():
        rebuild = BlueGreenRebuild(
            runner, batch_size=40, progress=lambda p: seen.append(dataclasses.replace(p))
        )
        await rebuild.run()
    stop.set()
    await asyncio.gather(querying, sending, watching)
    await wait_until(runtime, traffic.last)

    assert client.problems == []
    assert client.answers > 10
    assert seen
    assert seen[-1].percent > 90
    assert reported, "health never showed a rebuild"
    assert {"percent", "eta_seconds", "generation"} <= set(reported[-1]["rebuild"])
    read_models = runtime.backend.read_models
    for runner in runtime.runners.values():
        assert await live_tables(read_models).generation(runner.projection) == 2
        assert runner.status.rebuild is None
        assert runner.status.failures == 0, runner.status.last_error  # a switch is no failure
    after = set(await physical_tables(read_models))
    old = {t for r in runtime.runners.values() for t in r.projection.tables} & before
    assert old
    assert not old & after, "the first generation's tables are dropped"
    assert not any("@" in c.name for c in await read_models.checkpoints())
    await check_fts(runtime, 2)

    # The new generation equals a rebuild from scratch (in place, into the same generation).
    live = {n: await dump(read_models, r.projection) for n, r in runtime.runners.items()}
    live_searches = await searches(runtime)
    following.set()
    await asyncio.gather(*runners)
    for runner in runtime.runners.values():
        await runner.rebuild(batch_size=500)
    assert {n: await dump(read_models, r.projection) for n, r in runtime.runners.items()} == live
    assert await searches(runtime) == live_searches
    assert sum(len(ids) for ids in live_searches.values()) > 0


class OrderSearchV2(OrderSearchProjection):
    version = 2


async def test_a_bumped_version_rebuilds_by_itself(database_url: str) -> None:
    first = await Runtime.open(service, Settings(database_url=database_url))
    try:
        traffic = Traffic(first, random.Random(99))
        while len(traffic.orders) < 30:
            await traffic.send_one()
        await first.catch_up(traffic.last)
        expected = await searches(first)
    finally:
        await first.close()

    def projections() -> list[Projection]:
        return [OrderSearchV2() if p.name == "order_search" else p for p in service.projections()]

    bumped = dataclasses.replace(service, projections=projections)
    second = await Runtime.open(bumped, Settings(database_url=database_url))
    try:
        read_models = second.backend.read_models
        search = second.runners["order_search"]
        assert await live_tables(read_models).row(search.projection) == (1, 1)
        second.start_projections()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while await live_tables(read_models).row(search.projection) != (2, 2):
            assert loop.time() < deadline, "the bumped projection was not rebuilt"
            await asyncio.sleep(0.02)
        assert await searches(second) == expected
        # Untouched projections keep their first generation.
        assert (
            await live_tables(read_models).generation(second.runners["order_detail"].projection)
            == 1
        )
    finally:
        await second.close()
