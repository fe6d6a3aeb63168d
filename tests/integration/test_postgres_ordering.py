"""The PostgreSQL log under concurrent writers: late commits, rollbacks, storms, a hot stream.

The ``pg_seen`` projection writes one row per event, keyed by event id (applying an event
twice fails its batch), with an identity column recording the order the reader applied them.
Runners use a 60 s poll interval where the point is that no timer is needed.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cqrskit.backend import Backend
from cqrskit.errors import ConcurrencyError
from cqrskit.messages import LOG_START, DomainEvent, LogPosition, utc_now
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.postgres import PostgresEventStore, open_postgres_backend
from cqrskit.store.protocol import NO_STREAM, StreamAppend

ROOT = Path(__file__).resolve().parents[2]


class Ticked(DomainEvent):
    event_type = "tests.pg_ordering.Ticked"

    n: int = 0


_SEEN = sql("INSERT INTO pg_seen (event_id, stream_id, version) VALUES ($1, $2, $3)")
SEEN_ROWS = sql("SELECT event_id, stream_id, version FROM pg_seen ORDER BY applied")
COMMITTED = sql("SELECT event_id, stream_id, version FROM events ORDER BY transaction_id, position")


class Seen(Projection):
    name = "pg_seen"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS pg_seen (event_id uuid PRIMARY KEY,"
            " stream_id text NOT NULL, version integer NOT NULL,"
            " applied bigint GENERATED ALWAYS AS IDENTITY)"
        ),
    )
    truncate = (sql("DELETE FROM pg_seen"),)

    @on(Ticked)
    def _ticked(self, event: Ticked) -> Iterator[Statement]:
        yield _SEEN(event.event_id, event.stream_id, event.version)


def tick(n: int = 0) -> Ticked:
    return Ticked(n=n, occurred_at=utc_now())


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[Backend]:
    backend = await open_postgres_backend(postgres_url)
    try:
        yield backend
    finally:
        await backend.close()


def pg_store(backend: Backend) -> PostgresEventStore:
    assert isinstance(backend.store, PostgresEventStore)
    return backend.store


async def seen_rows(backend: Backend) -> list[tuple[Any, str, int]]:
    rows = await backend.read_models.fetch(SEEN_ROWS)
    return [(row["event_id"], row["stream_id"], row["version"]) for row in rows]


LAST_COMMITTED = sql(
    "SELECT transaction_id::text::bigint AS tx, position FROM events"
    " ORDER BY transaction_id DESC, position DESC LIMIT 1"
)


async def settle(runner: ProjectionRunner, backend: Backend, timeout: float = 60.0) -> None:
    """Wait until the live runner has applied every committed event.

    The target is the last committed row, read without the fence: other sessions on the
    server may hold the fence back for a while, and the runner must then wait too.
    """

    async def done() -> None:
        row = await backend.read_models.fetchone(LAST_COMMITTED)
        assert row is not None
        target = LogPosition(row["tx"], row["position"])
        # Polls database state, which no local event could signal.
        while await backend.read_models.checkpoint(runner.name) != target:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await asyncio.wait_for(done(), timeout)


async def start(runner: ProjectionRunner) -> tuple[asyncio.Event, asyncio.Task[None]]:
    await runner.migrate()
    stop = asyncio.Event()
    return stop, asyncio.create_task(runner.run(stop))


async def finish(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 10.0)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_late_commit_is_never_skipped_and_applied_once(
    backend: Backend, postgres_url: str, outcome: str
) -> None:
    store = pg_store(backend)
    runner = ProjectionRunner(store, backend.read_models, Seen(), batch_size=100, poll_interval=60)
    stop, task = await start(runner)
    before = await store.append(StreamAppend("early", NO_STREAM, [tick(n) for n in range(5)]))
    await settle(runner, backend)

    conn = await asyncpg.connect(postgres_url)
    try:
        late_tx = conn.transaction()
        await late_tx.start()
        late = await store.append_on(conn, StreamAppend("late", NO_STREAM, [tick(-1)]))
        for batch in range(10):
            events = [tick(n) for n in range(100)]
            await store.append(StreamAppend(f"busy-{batch}", NO_STREAM, events))
        assert (
            late.position
            < (await store.append(StreamAppend("probe", NO_STREAM, [tick()]))).position
        )
        # B's 1,001 committed events sit behind A's open transaction: none may be applied.
        for _ in range(20):
            await asyncio.sleep(0.1)
            checkpoint = await backend.read_models.checkpoint(runner.name)
            assert checkpoint == before.position < late.position
        assert len(await seen_rows(backend)) == 5
        if outcome == "commit":
            await late_tx.commit()
        else:
            await late_tx.rollback()
    finally:
        await conn.close()

    # No announcement and a 60 s poll interval: only the fence re-poll can move the runner.
    await settle(runner, backend, timeout=30.0)
    await finish(stop, task)
    rows = await seen_rows(backend)
    expected = 5 + 1001 + (1 if outcome == "commit" else 0)
    assert len(rows) == expected == len({row[0] for row in rows})
    late_ids = [row for row in rows if row[1] == "late"]
    assert late_ids == ([(late.events[0].event.event_id, "late", 1)] if outcome == "commit" else [])
    assert sorted(rows) == sorted(
        (row["event_id"], row["stream_id"], row["version"])
        for row in await backend.read_models.fetch(COMMITTED)
    )
    assert runner.status.failures == 0


async def write_storm(url: str, seed: int, transactions: int) -> None:
    """Append in explicit transactions with random delays before commit and some rollbacks."""
    rng = random.Random(seed)
    backend = await open_postgres_backend(url, migrate=False)
    store = pg_store(backend)
    try:
        for _ in range(transactions):
            streams = rng.sample(["hot-a", "hot-b", "hot-c", f"own-{seed}"], rng.randint(1, 2))
            while True:
                versions = [await store.stream_version(s) for s in streams]
                appends = [
                    StreamAppend(s, v, [tick(seed) for _ in range(rng.randint(1, 3))])
                    for s, v in zip(streams, versions, strict=True)
                ]
                try:
                    async with store.db.connection() as conn:
                        tx = conn.transaction()
                        await tx.start()
                        try:
                            await store.append_on(conn, *appends)
                            await asyncio.sleep(rng.uniform(0, 0.02))
                        except BaseException:
                            await tx.rollback()
                            raise
                        if rng.random() < 0.15:
                            await tx.rollback()
                        else:
                            await tx.commit()
                            store.announce()
                    break
                except ConcurrencyError:
                    await asyncio.sleep(rng.uniform(0, 0.005))
    finally:
        await backend.close()


_WRITER = (
    "import asyncio, sys; sys.path.insert(0, sys.argv[1]);"
    " from tests.integration.test_postgres_ordering import write_storm;"
    " asyncio.run(write_storm(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))"
)


def contiguous_per_stream(rows: list[tuple[Any, str, int]]) -> bool:
    versions: dict[str, int] = {}
    for _, stream_id, version in rows:
        if version != versions.get(stream_id, 0) + 1:
            return False
        versions[stream_id] = version
    return True


async def test_append_storm_from_tasks_and_processes(backend: Backend, postgres_url: str) -> None:
    store = pg_store(backend)
    runner = ProjectionRunner(store, backend.read_models, Seen(), batch_size=50, poll_interval=60)
    stop, task = await start(runner)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WRITER, str(ROOT), postgres_url, str(seed), "40", cwd=ROOT
        )
        for seed in (101, 102, 103)
    ]
    try:
        await asyncio.gather(*(write_storm(postgres_url, seed, 40) for seed in (1, 2, 3, 4)))
        for process in processes:
            assert await asyncio.wait_for(process.wait(), 120) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    await settle(runner, backend)
    await finish(stop, task)
    live = await seen_rows(backend)
    committed = [
        (row["event_id"], row["stream_id"], row["version"])
        for row in await backend.read_models.fetch(COMMITTED)
    ]
    assert len(committed) > 200
    assert len(live) == len({row[0] for row in live})
    assert sorted(live) == sorted(committed)
    assert contiguous_per_stream(live)
    assert contiguous_per_stream(committed)
    assert runner.status.failures == 0

    await runner.rebuild(batch_size=37)
    rebuilt = await seen_rows(backend)
    assert rebuilt == live


async def test_hot_stream_versions_are_contiguous_and_count_the_winners(
    backend: Backend, postgres_url: str
) -> None:
    store = pg_store(backend)
    await store.append(StreamAppend("hot", NO_STREAM, [tick()]))
    outcomes: list[str] = []
    rng = random.Random(7)

    async def appender(slow: bool) -> None:
        for _ in range(6):
            version = await store.stream_version("hot")
            try:
                if slow:  # hold the transaction open so rivals wait on the unique index
                    async with store.db.connection() as conn, conn.transaction():
                        await store.append_on(conn, StreamAppend("hot", version, [tick()]))
                        await asyncio.sleep(rng.uniform(0, 0.01))
                else:
                    await store.append(StreamAppend("hot", version, [tick()]))
                outcomes.append("won")
            except ConcurrencyError:
                outcomes.append("conflict")

    await asyncio.gather(*(appender(slow=n % 2 == 0) for n in range(30)))
    wins = outcomes.count("won")
    assert wins + outcomes.count("conflict") == 180
    assert outcomes.count("conflict") > 0
    versions = [e.version for e in await store.read_stream("hot")]
    assert versions == list(range(1, wins + 2))
    head = await store.head()
    log = await store.read_all(after=LOG_START, limit=10_000)
    assert log[-1].position == head
    assert [r.event.version for r in log if r.event.stream_id == "hot"] == versions
