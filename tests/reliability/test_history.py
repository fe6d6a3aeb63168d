"""The history checker catches each kind of broken history, and passes a clean one.

Hand-made logs: real appends to the in-memory and SQLite stores (a lost ack, a leaked
failure, a command stored twice, a row deleted behind the store's back), and a bare list of
recorded events for what no real store lets through (a duplicate event id or version).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.config import Settings
from cqrskit.messages import DomainEvent, EventMetadata, LogPosition, RecordedEvent
from cqrskit.read_models.protocol import sql
from cqrskit.service import Runtime
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import ANY_VERSION, EventStore, StreamAppend
from tests.integration.ticks import Ticked, append_ticks
from tests.integration.ticks import service as ticks_service
from tests.reliability.history import (
    History,
    Outcome,
    assert_converged,
    canonical_hash,
    check_history,
)

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def ticks(command_id: UUID, stream_id: str, count: int = 1) -> list[DomainEvent]:
    meta = EventMetadata(causation_id=command_id)
    return [
        Ticked(stream_id=stream_id, amount=i, occurred_at=NOW, metadata=meta) for i in range(count)
    ]


async def send(
    history: History, store: EventStore, stream: str, count: int = 1, outcome: Outcome = Outcome.OK
) -> UUID:
    """Append a command's events and record the outcome the client was told."""
    command_id = uuid4()
    op = history.begin(command_id, stream, ANY_VERSION)
    await store.append(StreamAppend(stream, ANY_VERSION, ticks(command_id, stream, count)))
    if outcome is Outcome.OK:
        history.ok(op, 201, events=count)
    elif outcome is Outcome.FAILED:
        history.failed(op, 409)
    else:
        history.unknown(op, 503)
    return command_id


@pytest.fixture
async def clean() -> tuple[History, MemoryEventStore]:
    history, store = History(), MemoryEventStore()
    for i in range(5):
        await send(history, store, f"s-{i % 2}", count=1 + i % 3)
    return history, store


async def test_a_clean_history_passes(clean: tuple[History, MemoryEventStore]) -> None:
    history, store = clean
    result = await check_history(history, store)
    result.assert_clean()
    assert (result.events, result.streams, result.ok, result.commands) == (9, 2, 5, 5)
    assert history.summary() == {"operations": 5, "ok": 5, "failed": 0, "unknown": 0}


async def test_an_acknowledged_command_missing_from_the_log_is_lost(
    clean: tuple[History, MemoryEventStore],
) -> None:
    history, store = clean
    ghost = uuid4()
    history.ok(history.begin(ghost, "s-9", 0), 201)
    result = await check_history(history, store)
    assert result.lost == [ghost]
    with pytest.raises(AssertionError, match=f"lost: acknowledged command {ghost}"):
        result.assert_clean()


async def test_fewer_events_than_acknowledged_is_lost(
    clean: tuple[History, MemoryEventStore],
) -> None:
    history, store = clean
    short = await send(history, store, "s-3", count=2)
    history.operations[-1].events = 3
    assert (await check_history(history, store)).lost == [short]


async def test_an_ok_command_that_stores_nothing_is_not_lost_when_said_so() -> None:
    history = History()
    history.ok(history.begin(uuid4(), "s"), 200, events=0)
    (await check_history(history, MemoryEventStore())).assert_clean()


async def test_a_failed_command_that_left_events_leaked(
    clean: tuple[History, MemoryEventStore],
) -> None:
    history, store = clean
    leak = await send(history, store, "s-0", outcome=Outcome.FAILED)
    result = await check_history(history, store)
    assert result.leaked == [leak]
    with pytest.raises(AssertionError, match="leaked"):
        result.assert_clean()


async def test_a_failed_attempt_then_an_ok_retry_is_fine(
    clean: tuple[History, MemoryEventStore],
) -> None:
    history, store = clean
    command_id = await send(history, store, "s-0")
    retry = history.operations.pop()
    history.failed(history.begin(command_id, "s-0"), 409)
    history.operations.append(retry)
    (await check_history(history, store)).assert_clean()


async def test_a_command_stored_twice_is_duplicated(
    clean: tuple[History, MemoryEventStore],
) -> None:
    history, store = clean
    twice = await send(history, store, "s-0", count=2)
    await send(history, store, "s-1")  # something else in between
    await store.append(StreamAppend("s-0", ANY_VERSION, ticks(twice, "s-0", 2)))
    result = await check_history(history, store)
    assert any(str(twice) in d and "not one append" in d for d in result.duplicated), result
    assert result.lost == []
    assert result.gaps == []
    with pytest.raises(AssertionError, match="duplicated"):
        result.assert_clean()


async def test_a_retry_that_stored_again_in_one_append_is_duplicated() -> None:
    # Back to back, the two copies look like one append: the count the client was told
    # still tells them apart.
    history, store = History(), MemoryEventStore()
    twice = await send(history, store, "s", count=2)
    await store.append(StreamAppend("s", ANY_VERSION, ticks(twice, "s", 2)))
    result = await check_history(history, store)
    assert result.duplicated == [f"command {twice}: stored 4 events, client told {{2}}"]


class ListLog:
    """A hand-made log that no real store would accept."""

    def __init__(self, records: Sequence[RecordedEvent]) -> None:
        self.records = list(records)

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        later = [r for r in self.records if r.position > after]
        return later[:limit]


def record(position: int, event: DomainEvent, stream: str, version: int) -> RecordedEvent:
    event = event.model_copy(update={"stream_id": stream, "version": version})
    return RecordedEvent(LogPosition(0, position), event, NOW)


async def test_a_duplicate_event_id_and_version_are_duplicated() -> None:
    command_id = uuid4()
    (event,) = ticks(command_id, "s")
    event = event.model_copy(update={"event_id": uuid4()})
    log = ListLog([record(1, event, "s", 1), record(2, event, "s", 1)])
    history = History()
    history.ok(history.begin(command_id, "s"), 201)
    result = await check_history(history, log)
    assert f"event id {event.event_id} appears twice" in result.duplicated
    assert "stream 's' version 1 twice" in result.duplicated


async def test_out_of_order_versions_and_positions_are_gaps() -> None:
    a, b = (e.model_copy(update={"event_id": uuid4()}) for e in ticks(uuid4(), "s", 2))
    log = ListLog([record(1, b, "s", 2), record(2, a, "s", 1)])
    assert (await check_history(History(), log)).gaps == ["stream 's' has versions [2, 1]"]


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    backend = await open_backend(f"sqlite:///{tmp_path}/history.db")
    try:
        yield backend
    finally:
        await backend.close()


async def test_a_row_deleted_from_a_stream_is_a_gap(sqlite_backend: Backend) -> None:
    history, store = History(), sqlite_backend.store
    await send(history, store, "s-0", count=3)
    victim = await send(history, store, "s-1", count=4)
    (await check_history(history, store)).assert_clean()

    db = sqlite_backend.read_models.db  # type: ignore[attr-defined]
    await db.write(
        lambda conn: conn.execute("DELETE FROM events WHERE stream_id = 's-1' AND version = 2")
    )
    result = await check_history(history, store)
    assert result.gaps == ["stream 's-1' has versions [1, 3, 4]"]
    assert result.lost == [victim]  # three of its four acknowledged events are left


async def test_unknown_outcomes_are_resolved(sqlite_backend: Backend) -> None:
    history, store = History(), sqlite_backend.store
    await send(history, store, "s", outcome=Outcome.UNKNOWN)
    history.begin(uuid4(), "s")  # never answered, never stored
    history.unknown(history.begin(uuid4(), "s"), "timeout")
    result = await check_history(history, store)
    result.assert_clean()
    assert (result.unknown, result.unknown_committed, result.unknown_absent) == (3, 1, 2)


async def test_canonical_hash_ignores_row_order_and_sees_any_change(
    sqlite_backend: Backend,
) -> None:
    read_models = sqlite_backend.read_models
    await read_models.migrate([sql("CREATE TABLE IF NOT EXISTS t (k TEXT, v)")])
    db = read_models.db  # type: ignore[attr-defined]
    await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2)]))
    first = await canonical_hash(read_models, ["t", "missing"])
    await db.write(lambda c: c.execute("DELETE FROM t"))
    await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?, ?)", [("b", 2), ("a", 1)]))
    assert await canonical_hash(read_models, ["t", "missing"]) == first
    # Same text, another type (a column without affinity keeps it): not the same row.
    await db.write(lambda c: c.execute("UPDATE t SET v = '1' WHERE k = 'a'"))
    changed = await canonical_hash(read_models, ["t", "missing"])
    assert changed != first
    await db.write(lambda c: c.execute("UPDATE t SET v = 1 WHERE k = 'a'"))
    assert await canonical_hash(read_models, ["t", "missing"]) == first
    await db.write(lambda c: c.execute("INSERT INTO t VALUES ('a', 1)"))  # a duplicate row
    assert await canonical_hash(read_models, ["t", "missing"]) not in (first, changed)


@pytest.fixture
async def ticks_runtime(database_url: str) -> AsyncIterator[Runtime]:
    runtime = await Runtime.open(ticks_service, Settings(database_url=database_url))
    try:
        yield runtime
    finally:
        await runtime.close()


async def test_assert_converged_passes_live_and_catches_a_tampered_read_model(
    ticks_runtime: Runtime,
) -> None:
    await append_ticks(ticks_runtime.backend, 120, streams=7, chunk=40)
    hashes = await assert_converged(ticks_runtime)
    assert set(hashes) == {"ticks"}
    assert await assert_converged(ticks_runtime) == hashes  # private tables were dropped

    # A read model that drifted from the log (here: written behind the projection's back).
    await ticks_runtime.backend.read_models.commit(
        "ticks",
        [sql("UPDATE tick_totals SET total = total + 1 WHERE stream_id = $1")("tick-3")],
        expected=await ticks_runtime.backend.read_models.checkpoint("ticks"),
        position=await ticks_runtime.backend.read_models.checkpoint("ticks"),
    )
    with pytest.raises(AssertionError, match="ticks: tick_totals live"):
        await assert_converged(ticks_runtime)
