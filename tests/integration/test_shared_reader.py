"""The runners of one runtime share their log reads, on real SQLite and PostgreSQL stores.

The ``tally_*`` projections record every event they apply under a primary key (the event id):
an event applied twice fails its batch and a missed one is a missing row. The orders service
checks the same sharing against a rebuild of its five real projections.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import ClassVar

import pytest

from cqrskit.backend import open_backend
from cqrskit.config import Settings
from cqrskit.messages import LOG_START, DomainEvent, LogPosition, RecordedEvent, utc_now
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import ProjectionState
from cqrskit.projections.shared_reader import SharedLogReader
from cqrskit.read_models.protocol import Sql, Statement, sql
from cqrskit.service import Runtime, Service
from cqrskit.store.protocol import ANY_VERSION, EventStore, StreamAppend
from orders.service import service as orders_service
from tests.integration.test_rebuild_equals_live import Traffic
from tests.reliability.history import assert_converged, wait_caught_up


class Counted(DomainEvent):
    event_type = "tests.shared_reader.Counted"

    n: int


def _table(name: str) -> tuple[Sql, ...]:
    return (
        sql(
            f"CREATE TABLE IF NOT EXISTS {name} ("
            " event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, n INTEGER NOT NULL)"
        ),
    )


class Tally(Projection):
    """One row per applied event; a second application of an event violates the key."""

    insert: ClassVar[Sql]

    @on(Counted)
    def _counted(self, event: Counted) -> Iterator[Statement]:
        yield self.insert(str(event.event_id), event.stream_id, event.n)


class TallyA(Tally):
    name = "tally_a"
    schema = _table("tally_a")
    insert = sql("INSERT INTO tally_a (event_id, stream_id, n) VALUES ($1, $2, $3)")


class TallyB(Tally):
    name = "tally_b"
    schema = _table("tally_b")
    insert = sql("INSERT INTO tally_b (event_id, stream_id, n) VALUES ($1, $2, $3)")


class TallyC(Tally):
    name = "tally_c"
    schema = _table("tally_c")
    insert = sql("INSERT INTO tally_c (event_id, stream_id, n) VALUES ($1, $2, $3)")


class TallyD(Tally):
    name = "tally_d"
    schema = _table("tally_d")
    insert = sql("INSERT INTO tally_d (event_id, stream_id, n) VALUES ($1, $2, $3)")


class TallyE(Tally):
    name = "tally_e"
    schema = _table("tally_e")
    insert = sql("INSERT INTO tally_e (event_id, stream_id, n) VALUES ($1, $2, $3)")


TALLIES: tuple[type[Tally], ...] = (TallyA, TallyB, TallyC, TallyD, TallyE)
ROWS = {
    TallyA.name: sql("SELECT event_id FROM tally_a"),
    TallyB.name: sql("SELECT event_id FROM tally_b"),
    TallyC.name: sql("SELECT event_id FROM tally_c"),
    TallyD.name: sql("SELECT event_id FROM tally_d"),
    TallyE.name: sql("SELECT event_id FROM tally_e"),
}

tallies = Service(
    title="tallies",
    projections=lambda: [t() for t in TALLIES],
    register=lambda commands, queries, read_models: None,
)


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[Runtime]:
    # A poll interval far longer than the tests: only wake-ups deliver live events.
    settings = Settings(database_url=database_url, projection_batch_size=50)
    rt = await Runtime.open(tallies, settings.model_copy(update={"projection_poll_interval": 60}))
    try:
        yield rt
    finally:
        await rt.close()


class Queries:
    """Counts the store's ``read_all`` queries; can hold the next one's answer back."""

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.hold_next = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self._read_all = runtime.backend.store.read_all
        monkeypatch.setattr(runtime.backend.store, "read_all", self.read_all)

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        self.count += 1
        hold, self.hold_next = self.hold_next, False
        page = await self._read_all(after=after, limit=limit)
        if hold:  # answered as of now, returned later: a query still in flight
            self.held.set()
            await self.release.wait()
        return page


async def append(runtime: Runtime, stream: str, count: int, start: int = 0) -> None:
    events = [Counted(n=start + n, occurred_at=utc_now()) for n in range(count)]
    await runtime.backend.store.append(StreamAppend(stream, ANY_VERSION, events))


async def wait_for(runtime: Runtime, name: str, position: LogPosition) -> None:
    """Wait (bounded) until projection ``name`` has committed ``position``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while await runtime.backend.read_models.checkpoint(name) < position:
        assert loop.time() < deadline, f"{name} did not reach {position.token()}"
        await asyncio.sleep(0.01)


async def assert_each_applied_once(runtime: Runtime) -> int:
    log = await runtime.backend.store.read_all(after=LOG_START, limit=1_000_000)
    expected = sorted(str(r.event.event_id) for r in log if isinstance(r.event, Counted))
    for name, rows in ROWS.items():
        applied = sorted(row["event_id"] for row in await runtime.backend.read_models.fetch(rows))
        assert applied == expected, name
        assert runtime.runners[name].status.failures == 0, runtime.runners[name].status
    return len(expected)


async def test_five_runners_read_each_page_once_instead_of_five_times(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=sqlite_url, projection_batch_size=50)
    runtime = await Runtime.open(tallies, settings)
    try:
        for stream in range(20):
            await append(runtime, f"s-{stream}", 50)
        queries = Queries(runtime, monkeypatch)
        runtime.start_projections()
        await wait_caught_up(runtime, timeout=60)
        assert await assert_each_applied_once(runtime) == 1000
    finally:
        await runtime.close()
    # 20 full pages and the empty one at the end; unshared, every runner reads all 21 itself.
    pages = 21
    assert queries.count < 2 * pages, f"{queries.count} queries for {pages} pages and 5 runners"


async def test_under_concurrent_appends_every_runner_applies_every_event_once(
    runtime: Runtime,
) -> None:
    await append(runtime, "early", 120)
    # Two runners start at the head, three far behind it.
    for name in (TallyA.name, TallyB.name):
        await runtime.runners[name].catch_up()
    runtime.start_projections()

    async def writer(k: int) -> None:
        rng = random.Random(k)
        for n in range(25):
            await append(runtime, f"w{k}-{rng.randrange(5)}", rng.randint(1, 6), start=n * 10)
            if rng.random() < 0.3:
                await asyncio.sleep(0)

    await asyncio.gather(*(writer(k) for k in range(6)))
    await wait_caught_up(runtime, timeout=60)
    assert await assert_each_applied_once(runtime) > 120
    assert runtime.log_reader is not None
    assert runtime.log_reader.queries < runtime.log_reader.requests


async def test_a_runner_at_the_head_sees_an_event_appended_while_a_shared_read_is_in_flight(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    await append(runtime, "s", 3)
    for runner in runtime.runners.values():
        await runner.catch_up()
    queries = Queries(runtime, monkeypatch)
    slow, live = runtime.runners[TallyA.name], runtime.runners[TallyB.name]
    stop = asyncio.Event()
    following = asyncio.create_task(live.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while live.status.state is not ProjectionState.RUNNING:  # caught up, waiting for events
        assert loop.time() < deadline, live.status
        await asyncio.sleep(0.01)
    queries.hold_next = True
    caught_up = asyncio.create_task(slow.catch_up())  # its query answers "nothing new"...
    try:
        await asyncio.wait_for(queries.held.wait(), 20)
        assert runtime.log_reader is not None
        requests = runtime.log_reader.requests
        await append(runtime, "s", 1, start=3)  # ...and is still in flight when this commits
        head = await runtime.backend.store.head()
        while runtime.log_reader.requests == requests:  # the live runner's wake-up read began
            assert loop.time() < deadline + 20, live.status
            await asyncio.sleep(0.001)
        queries.release.set()
        # The live runner's wake-up must read again, not take the older query's answer.
        await wait_for(runtime, live.name, head)
    finally:
        queries.release.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(following, caught_up), 20)
    rows = await runtime.backend.read_models.fetch(ROWS[live.name])
    assert len(rows) == 4


async def test_views_at_drifting_positions_in_the_tail_read_what_the_store_reads(
    database_url: str,
) -> None:
    """Five views follow the log while it is appended to; each answer is checked against
    ``store.read_all`` just before the read (its prefix: nothing readable then is missing)
    and just after (the answer is its prefix: nothing skipped, nothing out of order)."""
    backend = await open_backend(database_url)
    store = backend.store
    reader = SharedLogReader(store, tail=40)
    try:
        for stream in range(4):
            await append_to(store, f"early-{stream}", 10)
        appending = True

        async def appender() -> None:
            rng = random.Random(7)
            for n in range(60):
                await append_to(store, f"w-{rng.randrange(6)}", rng.randint(1, 4), n)
                await asyncio.sleep(rng.random() / 500)

        async def follower(k: int) -> None:
            rng = random.Random(k)
            view, position = reader.view(), LOG_START
            while appending or position < await store.head():
                limit = rng.randint(3, 15)
                before = ids(await store.read_all(after=position, limit=limit))
                view.mark()
                answer = ids(await view.read_all(after=position, limit=limit))
                after = ids(await store.read_all(after=position, limit=limit))
                assert answer[: len(before)] == before, (k, position)
                assert after[: len(answer)] == answer, (k, position)
                if answer:  # drift: take a random part of the answer, as a failed batch would
                    position = answer[rng.randrange(len(answer))][0]
                await asyncio.sleep(rng.random() / 200)

        followers = [asyncio.create_task(follower(k)) for k in range(5)]
        await appender()
        appending = False
        await asyncio.wait_for(asyncio.gather(*followers), 60)
    finally:
        await reader.close()
        await backend.close()
    # Each event was handed to every view, and decoded far fewer times than that.
    counts = (reader.queries, reader.requests, reader.fetched, reader.served)
    assert reader.queries < reader.requests, counts
    assert reader.fetched < reader.served / 2, counts


def ids(page: list[RecordedEvent]) -> list[tuple[LogPosition, str]]:
    return [(r.position, str(r.event.event_id)) for r in page]


async def append_to(store: EventStore, stream: str, count: int, start: int = 0) -> None:
    events = [Counted(n=start + n, occurred_at=utc_now()) for n in range(count)]
    await store.append(StreamAppend(stream, ANY_VERSION, events))


@pytest.fixture
async def orders(database_url: str) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(orders_service, Settings(database_url=database_url))
    try:
        yield rt
    finally:
        await rt.close()


async def test_orders_projections_fed_by_shared_reads_equal_a_rebuild(orders: Runtime) -> None:
    orders.start_projections()

    async def client(seed: int) -> None:
        traffic = Traffic(orders, random.Random(seed))
        for _ in range(60):
            await traffic.send_one()

    await asyncio.gather(*(client(seed) for seed in range(4)))
    await assert_converged(orders, timeout=60)
    assert orders.log_reader is not None
    assert orders.log_reader.queries < orders.log_reader.requests
