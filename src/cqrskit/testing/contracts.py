"""Backend contract suites, written once and run against every adapter.

A backend's test module subclasses a contract and supplies one async generator that yields a
fresh, empty, migrated store and cleans up after the ``yield``::

    class TestSQLiteEventStore(EventStoreContract):
        async def make_store(self) -> AsyncIterator[EventStore]:
            with tempfile.TemporaryDirectory() as directory:
                store = SQLiteEventStore(await SQLiteDatabase.open(Path(directory) / "e.db"))
                await store.migrate()
                yield store
                await store.close()

Each test gets its own store through the ``store`` (or ``read_models``) fixture, so tests never
share state. The base classes are not named ``Test*``: pytest collects only the subclasses.
Test names echo the numbered guarantees of :mod:`cqrskit.store.protocol` and
:mod:`cqrskit.read_models.protocol`. Requires pytest and pytest-asyncio (``asyncio_mode=auto``).
"""

# ruff: noqa: S101  (a test suite: pytest rewrites these asserts)

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from cqrskit.errors import ConcurrencyError, CqrskitError, IntegrityError, ProjectionError
from cqrskit.idempotency import CommandRecord, DuplicateCommand
from cqrskit.messages import (
    LOG_START,
    NIL_UUID,
    DomainEvent,
    EventMetadata,
    LogPosition,
    RecordedEvent,
)
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from cqrskit.store.protocol import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventStore,
    StreamAppend,
    StreamPager,
)

__all__ = [
    "HOSTILE_STRINGS",
    "Deposited",
    "EventStoreContract",
    "ReadModelStoreContract",
    "Withdrawn",
    "deposit",
    "wait_until_readable",
]

OCCURRED_AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)
_CLOCK_TOLERANCE = 1.0
"""Seconds two readings of a store's clock may differ by (``now`` may be an estimate)."""

HOSTILE_STRINGS = (
    "'; DROP TABLE contract_rows; --",
    'Robert"); DELETE FROM projection_checkpoints; --',
    "$1 ?1 ? %s %(x)s {0} \\ \\' \\\\",
    "ünïcødé ✓ 日本語 😀",
    "line\nbreak\ttab\rreturn",
    "",
    " leading and trailing ",
)
"""Strings that break SQL built by concatenation; bound parameters carry them verbatim."""


class Deposited(DomainEvent):
    """Contract test event: money put into an account."""

    event_type = "cqrskit.testing.Deposited"

    amount: Decimal
    note: str = ""


class Withdrawn(DomainEvent):
    """Contract test event: money taken out of an account."""

    event_type = "cqrskit.testing.Withdrawn"

    amount: Decimal


def deposit(amount: str = "1.00", note: str = "", event_id: UUID = NIL_UUID) -> Deposited:
    """Return an unstored :class:`Deposited` event."""
    return Deposited(amount=Decimal(amount), note=note, event_id=event_id, occurred_at=OCCURRED_AT)


def _one(stream: str, expected: int, *events: DomainEvent) -> StreamAppend:
    return StreamAppend(stream, expected, list(events) or [deposit()])


async def wait_until_readable(
    store: EventStore, position: LogPosition, timeout: float = 30.0
) -> None:
    """Wait until ``read_all`` can return the event at ``position``.

    A store may hold a committed event back while an older transaction is still in flight
    (PostgreSQL's fence is cluster-wide), so a reader only sees it a moment later. Raises
    ``AssertionError`` after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (head := await store.head()) < position:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"event at {position.token()} not readable after {timeout} s")
        await store.wait_for_events(head, min(remaining, 0.5))


async def _append(
    store: EventStore, *streams: StreamAppend, command: CommandRecord | None = None
) -> AppendResult:
    result = await store.append(*streams, command=command)
    await wait_until_readable(store, result.position)
    return result


def _record(key: str, digest: str = "h") -> CommandRecord:
    return CommandRecord("alice", key, digest, "Deposit", '{"amount": "1.00"}')


async def _log(store: EventStore, limit: int = 10_000) -> list[RecordedEvent]:
    return await store.read_all(after=LOG_START, limit=limit)


class EventStoreContract:
    """The guarantees of :class:`~cqrskit.store.protocol.EventStore`, for any adapter."""

    def make_store(self) -> AsyncIterator[EventStore]:
        """Yield a fresh, empty, migrated store; clean up after the ``yield``."""
        raise NotImplementedError

    @pytest.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        """A fresh store per test, made by :meth:`make_store`."""
        async with contextlib.asynccontextmanager(self.make_store)() as store:
            yield store

    # 2. Versions contiguous from 1; (stream, version) unique.

    async def test_per_stream_versions_contiguous_from_1(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM, deposit(), deposit()))
        await _append(store, _one("acct-b", NO_STREAM))
        await _append(store, _one("acct-a", 2, deposit()))
        assert [e.version for e in await store.read_stream("acct-a")] == [1, 2, 3]
        assert [e.version for e in await store.read_stream("acct-b")] == [1]
        assert await store.stream_version("acct-a") == 3
        assert await store.stream_version("acct-b") == 1

    async def test_unknown_stream_is_empty_at_version_0(self, store: EventStore) -> None:
        assert await store.read_stream("acct-missing") == []
        assert await store.stream_version("acct-missing") == 0

    async def test_read_stream_after_version(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM, *(deposit(str(n)) for n in range(1, 6))))
        later = await store.read_stream("acct-a", after_version=3)
        assert [(e.version, e.amount) for e in later if isinstance(e, Deposited)] == [
            (4, Decimal(4)),
            (5, Decimal(5)),
        ]

    async def test_read_stream_records_pages_with_log_positions(self, store: EventStore) -> None:
        if not isinstance(store, StreamPager):
            pytest.skip("this store does not implement the optional StreamPager")
        await _append(store, _one("acct-a", NO_STREAM, *(deposit(str(n)) for n in range(1, 6))))
        await _append(store, _one("acct-b", NO_STREAM, deposit()))
        log = await _log(store)
        pages = [
            await store.read_stream_records("acct-a", after_version=after, limit=2)
            for after in (0, 2, 4, 5)
        ]
        assert [[r.event.version for r in page] for page in pages] == [[1, 2], [3, 4], [5], []]
        by_id = {r.event.event_id: r for r in log}
        for record in (r for page in pages for r in page):
            assert record.position == by_id[record.event.event_id].position
            assert record.recorded_at == by_id[record.event.event_id].recorded_at
        assert await store.read_stream_records("acct-missing", limit=10) == []

    # 3. A stale expected version raises ConcurrencyError and stores nothing.

    async def test_append_with_stale_version_raises_concurrency_error(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-a", NO_STREAM, deposit(), deposit()))
        with pytest.raises(ConcurrencyError):
            await store.append(_one("acct-a", 1, deposit("9.99")))
        assert await store.stream_version("acct-a") == 2
        assert len(await _log(store)) == 2

    async def test_expected_version_ahead_of_stream_raises(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        with pytest.raises(ConcurrencyError):
            await store.append(_one("acct-a", 5))
        assert await store.stream_version("acct-a") == 1

    async def test_no_stream_on_existing_stream_raises(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        with pytest.raises(ConcurrencyError):
            await store.append(_one("acct-a", NO_STREAM))
        assert len(await _log(store)) == 1

    async def test_any_version_appends(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", ANY_VERSION))
        await _append(store, _one("acct-a", ANY_VERSION, deposit(), deposit()))
        assert [e.version for e in await store.read_stream("acct-a")] == [1, 2, 3]

    # 1. Append is atomic across streams.

    async def test_multi_stream_append_is_atomic(self, store: EventStore) -> None:
        await _append(store, _one("acct-b", NO_STREAM))
        with pytest.raises(ConcurrencyError):
            await store.append(
                _one("acct-a", NO_STREAM, deposit("5.00")),
                _one("acct-c", NO_STREAM, deposit("6.00")),
                _one("acct-b", NO_STREAM, deposit("7.00")),  # stale: acct-b exists
            )
        assert await store.read_stream("acct-a") == []
        assert await store.read_stream("acct-c") == []
        assert len(await _log(store)) == 1

    async def test_multi_stream_append_stores_every_stream(self, store: EventStore) -> None:
        result = await _append(
            store, _one("acct-a", NO_STREAM, deposit(), deposit()), _one("acct-b", NO_STREAM)
        )
        assert [(r.event.stream_id, r.event.version) for r in result.events] == [
            ("acct-a", 1),
            ("acct-a", 2),
            ("acct-b", 1),
        ]
        assert result.events == await _log(store)
        assert result.position == result.events[-1].position

    # 1. and 3. A stream given with no events only has its expected version checked (a
    # command's read set: what it decided on must not have moved). The check happens where
    # the append reads the streams' versions.

    async def test_zero_event_append_at_current_version_stores_the_other_streams(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-read", NO_STREAM, deposit(), deposit()))
        for read_first in (True, False):
            read = StreamAppend("acct-read", 2, [])
            written = StreamAppend(f"acct-w-{read_first}", NO_STREAM, [deposit("3.00")])
            result = await _append(store, *((read, written) if read_first else (written, read)))
            assert [(r.event.stream_id, r.event.version) for r in result.events] == [
                (f"acct-w-{read_first}", 1)
            ]
        assert await store.stream_version("acct-read") == 2
        assert [r.event.stream_id for r in await _log(store)] == [
            "acct-read",
            "acct-read",
            "acct-w-True",
            "acct-w-False",
        ]

    async def test_zero_event_append_with_stale_version_raises_and_stores_nothing(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-read", NO_STREAM, deposit(), deposit()))
        await _append(store, _one("acct-w", NO_STREAM))
        for stale in (1, 3, NO_STREAM):
            for read_first in (True, False):
                read = StreamAppend("acct-read", stale, [])
                writes = [_one("acct-w", 1, deposit("5.00")), _one("acct-new", NO_STREAM)]
                streams = [read, *writes] if read_first else [*writes, read]
                with pytest.raises(ConcurrencyError):
                    await store.append(*streams)
        assert await store.read_stream("acct-new") == []
        assert await store.stream_version("acct-w") == 1
        assert await store.stream_version("acct-read") == 2
        assert len(await _log(store)) == 3

    async def test_zero_event_append_with_no_stream_checks_absence(self, store: EventStore) -> None:
        result = await _append(
            store, StreamAppend("acct-missing", NO_STREAM, []), _one("acct-w", NO_STREAM)
        )
        assert [r.event.stream_id for r in result.events] == ["acct-w"]
        assert await store.read_stream("acct-missing") == []
        with pytest.raises(ConcurrencyError):
            await store.append(StreamAppend("acct-w", NO_STREAM, []), _one("acct-x", NO_STREAM))
        assert await store.read_stream("acct-x") == []

    # 4. A returned append is visible; the result is what the log holds.

    async def test_append_result_is_what_the_log_returns(self, store: EventStore) -> None:
        first = await _append(store, _one("acct-a", NO_STREAM, deposit("1.00"), deposit("2.00")))
        second = await _append(store, _one("acct-b", NO_STREAM, deposit("3.00")))
        assert await _log(store) == first.events + second.events
        assert second.position > first.position

    # 7. Event ids are unique.

    async def test_nil_event_id_gets_fresh_id(self, store: EventStore) -> None:
        given = uuid4()
        result = await _append(store, _one("acct-a", NO_STREAM, deposit(), deposit(event_id=given)))
        fresh, kept = (r.event.event_id for r in result.events)
        assert fresh != NIL_UUID
        assert kept == given
        assert [e.event_id for e in await store.read_stream("acct-a")] == [fresh, given]

    async def test_event_ids_unique(self, store: EventStore) -> None:
        for n in range(5):
            await _append(store, _one(f"acct-{n}", NO_STREAM, *(deposit() for _ in range(20))))
        ids = [r.event.event_id for r in await _log(store)]
        assert len(ids) == 100
        assert len(set(ids)) == 100

    async def test_duplicate_event_id_is_rejected_and_nothing_stored(
        self, store: EventStore
    ) -> None:
        taken = uuid4()
        await _append(store, _one("acct-a", NO_STREAM, deposit(event_id=taken)))
        with pytest.raises((ConcurrencyError, IntegrityError)):
            await store.append(
                _one("acct-b", NO_STREAM, deposit()),
                _one("acct-c", NO_STREAM, deposit(event_id=taken)),
            )
        assert await store.read_stream("acct-b") == []
        assert len(await _log(store)) == 1

    # 5. and 6. read_all: log order, strictly after, no gaps, per-stream version order.

    async def test_read_all_returns_log_order_strictly_after_position(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-a", NO_STREAM, deposit("1.00")))
        await _append(store, _one("acct-b", NO_STREAM, deposit("2.00")))
        await _append(store, _one("acct-a", 1, deposit("3.00")))
        log = await _log(store)
        positions = [r.position for r in log]
        assert positions == sorted(positions)
        assert len(set(positions)) == 3
        assert [r.event.stream_id for r in log] == ["acct-a", "acct-b", "acct-a"]
        after_first = await store.read_all(after=log[0].position, limit=10)
        assert after_first == log[1:]
        assert await store.read_all(after=log[-1].position, limit=10) == []

    async def test_read_all_paginates_without_gaps_or_duplicates(self, store: EventStore) -> None:
        for n in range(7):
            await _append(
                store, _one(f"acct-{n % 3}", ANY_VERSION, deposit(), deposit(), deposit())
            )
        everything = await _log(store)
        assert len(everything) == 21
        pages: list[RecordedEvent] = []
        checkpoint = LOG_START
        while page := await store.read_all(after=checkpoint, limit=4):
            assert len(page) <= 4
            pages.extend(page)
            checkpoint = page[-1].position
        assert pages == everything

    async def test_read_all_keeps_per_stream_version_order(self, store: EventStore) -> None:
        for n in range(12):
            await _append(store, _one(f"acct-{n % 4}", ANY_VERSION, deposit()))
        seen: dict[str, int] = {}
        for record in await _log(store):
            event = record.event
            assert event.version == seen.get(event.stream_id, 0) + 1
            seen[event.stream_id] = event.version

    async def test_head_and_count_after(self, store: EventStore) -> None:
        assert await store.count_after(LOG_START) == 0
        assert await store.read_all(after=await store.head(), limit=10) == []
        await _append(store, _one("acct-a", NO_STREAM, deposit(), deposit()))
        result = await _append(store, _one("acct-b", NO_STREAM, deposit(), deposit(), deposit()))
        log = await _log(store)
        assert await store.head() == result.position == log[-1].position
        assert await store.count_after(LOG_START) == 5
        assert await store.count_after(log[1].position) == 3
        assert await store.count_after(await store.head()) == 0

    async def test_backlog_counts_readable_events_and_ages_the_oldest_by_the_store_clock(
        self, store: EventStore
    ) -> None:
        assert await store.backlog(LOG_START) == (0, 0.0)
        await _append(store, _one("acct-a", NO_STREAM, deposit(), deposit()))
        await _append(store, _one("acct-b", NO_STREAM, deposit(), deposit(), deposit()))
        log = await _log(store)
        oldest = min(record.recorded_at for record in log)
        before = await store.now()
        backlog = await store.backlog(LOG_START)
        after = await store.now()
        assert before.utcoffset() == timedelta(0)
        assert backlog.events == 5
        # Measured by the clock that stamped recorded_at: between the two readings of it.
        low = (before - oldest).total_seconds() - _CLOCK_TOLERANCE
        high = (after - oldest).total_seconds() + _CLOCK_TOLERANCE
        assert max(0.0, low) <= backlog.oldest_age <= high
        assert (await store.backlog(log[1].position)).events == 3
        assert await store.backlog(await store.head()) == (0, 0.0)

    # Wake-ups.

    async def test_wait_for_events_wakes_on_append(self, store: EventStore) -> None:
        head = await store.head()
        waiter = asyncio.ensure_future(store.wait_for_events(head, 120.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await store.append(_one("acct-a", NO_STREAM))
        # Well below the 120 s timeout: the append woke the waiter.
        assert await asyncio.wait_for(waiter, 30.0) is True

    async def test_wait_for_events_times_out_without_events(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        assert await store.wait_for_events(await store.head(), 0.2) is False

    async def test_wait_for_events_returns_at_once_when_events_are_readable(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        assert await asyncio.wait_for(store.wait_for_events(LOG_START, 60.0), 10.0) is True

    # Serialisation.

    async def test_round_trips_event_classes_and_decimal_exactly(self, store: EventStore) -> None:
        at = datetime(2023, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=5, minutes=30)))
        events: list[DomainEvent] = [
            Deposited(amount=Decimal("12345678901234567890.123456789"), note=note, occurred_at=at)
            for note in HOSTILE_STRINGS
        ]
        events.append(Withdrawn(amount=Decimal("0.10"), occurred_at=at))
        result = await _append(store, StreamAppend("acct-a", NO_STREAM, events))
        stored = await store.read_stream("acct-a")
        assert stored == [r.event for r in result.events]
        assert stored == [r.event for r in await _log(store)]
        for original, back in zip(events, stored, strict=True):
            assert type(back) is type(original)
            assert back.model_dump(exclude={"event_id", "stream_id", "version"}) == (
                original.model_dump(exclude={"event_id", "stream_id", "version"})
            )
        assert isinstance(stored[0], Deposited)
        assert str(stored[0].amount) == "12345678901234567890.123456789"
        assert stored[0].occurred_at == at
        assert isinstance(stored[-1], Withdrawn)
        assert str(stored[-1].amount) == "0.10"

    async def test_metadata_round_trips(self, store: EventStore) -> None:
        metadata = EventMetadata(causation_id=uuid4(), correlation_id=uuid4(), user_id="ünï'\"")
        event = deposit().model_copy(update={"metadata": metadata})
        await _append(store, _one("acct-a", NO_STREAM, event, deposit()))
        first, second = await store.read_stream("acct-a")
        assert first.metadata == metadata
        assert second.metadata == EventMetadata()
        assert (await _log(store))[0].event.metadata == metadata

    async def test_recorded_at_is_timezone_aware(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        (record,) = await _log(store)
        assert record.recorded_at.tzinfo is not None

    # Command records (guarantees 8 and 9).

    async def test_command_record_is_stored_with_its_events(self, store: EventStore) -> None:
        record = _record("k1")
        await _append(store, _one("acct-a", NO_STREAM))
        result = await _append(
            store, _one("acct-a", 1, deposit("1.00")), _one("acct-b", NO_STREAM), command=record
        )
        stored = await store.find_command("alice", "k1")
        assert stored is not None
        assert stored.record == record
        assert stored.events == result.events
        assert stored.position == result.position
        assert await store.find_command("bob", "k1") is None
        assert await store.find_command("alice", "k2") is None

    async def test_one_event_append_records_its_command(self, store: EventStore) -> None:
        result = await _append(store, _one("acct-a", NO_STREAM), command=_record("one"))
        stored = await store.find_command("alice", "one")
        assert stored is not None
        assert stored.events == result.events

    async def test_recorded_key_is_refused_and_nothing_stored(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM), command=_record("k1"))
        for streams in ([_one("acct-a", 1)], [_one("acct-b", NO_STREAM), _one("acct-c", 0)], []):
            with pytest.raises((DuplicateCommand, ConcurrencyError)):
                await store.append(*streams, command=_record("k1", digest="other"))
        assert [e.version for e in await store.read_stream("acct-a")] == [1]
        assert await store.read_stream("acct-b") == []
        assert len(await _log(store)) == 1
        stored = await store.find_command("alice", "k1")
        assert stored is not None
        assert stored.record.request_hash == "h"

    async def test_record_without_events_is_stored(self, store: EventStore) -> None:
        result = await store.append(command=_record("nothing"))
        assert result.events == []
        stored = await store.find_command("alice", "nothing")
        assert stored is not None
        assert stored.events == []
        assert stored.position is None
        with pytest.raises(DuplicateCommand):
            await store.append(command=_record("nothing"))

    async def test_failed_append_records_no_command(self, store: EventStore) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        with pytest.raises(ConcurrencyError):
            await store.append(_one("acct-a", 0), command=_record("stale"))
        assert await store.find_command("alice", "stale") is None
        await _append(store, _one("acct-a", 1), command=_record("stale"))
        assert await store.find_command("alice", "stale") is not None

    async def test_racing_appends_with_one_key_store_once(self, store: EventStore) -> None:
        outcomes = await asyncio.gather(
            *(
                store.append(_one(f"acct-{i}", NO_STREAM), command=_record("race"))
                for i in range(8)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, AppendResult)]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o, DuplicateCommand) for o in outcomes if o not in winners)
        await wait_until_readable(store, winners[0].position)
        assert len(await _log(store)) == 1

    # Concurrency.

    async def test_concurrent_appenders_on_one_stream_exactly_one_wins(
        self, store: EventStore
    ) -> None:
        await _append(store, _one("acct-a", NO_STREAM))
        for version in range(1, 11):
            outcomes = await asyncio.gather(
                store.append(_one("acct-a", version, deposit("1.00"))),
                store.append(_one("acct-a", version, deposit("2.00"))),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(errors) == 1, outcomes
            assert isinstance(errors[0], ConcurrencyError)
        assert [e.version for e in await store.read_stream("acct-a")] == list(range(1, 12))

    async def test_concurrent_writers_are_read_without_gaps(self, store: EventStore) -> None:
        """A reader following the log while many writers commit misses nothing (guarantee 5)."""
        writers_done = asyncio.Event()
        positions: list[LogPosition] = []

        async def write(stream: str) -> None:
            for _ in range(5):
                result = await store.append(_one(stream, ANY_VERSION, deposit(), deposit()))
                positions.append(result.position)
                while True:  # one contended stream, written like a command handler would
                    version = await store.stream_version("acct-shared")
                    try:
                        result = await store.append(_one("acct-shared", version))
                        positions.append(result.position)
                        break
                    except ConcurrencyError:
                        await asyncio.sleep(0)

        async def follow() -> list[RecordedEvent]:
            seen: list[RecordedEvent] = []
            checkpoint = LOG_START
            while True:
                finished = writers_done.is_set()
                page = await store.read_all(after=checkpoint, limit=7)
                if page:
                    seen.extend(page)
                    checkpoint = page[-1].position
                elif finished:
                    return seen
                else:
                    await store.wait_for_events(checkpoint, 0.05)

        reader = asyncio.ensure_future(follow())
        await asyncio.gather(*(write(f"acct-{n}") for n in range(8)))
        # The reader stops at its first empty page after this, so everything must be readable.
        await wait_until_readable(store, max(positions))
        writers_done.set()
        seen = await asyncio.wait_for(reader, 60.0)
        assert seen == await _log(store)
        assert len(seen) == 8 * 5 * 3
        assert len({r.event.event_id for r in seen}) == len(seen)
        versions: dict[str, int] = {}
        for record in seen:
            event = record.event
            assert event.version == versions.get(event.stream_id, 0) + 1
            versions[event.stream_id] = event.version
        assert versions["acct-shared"] == 40


_TABLE = sql(
    "CREATE TABLE IF NOT EXISTS contract_rows ("
    " id TEXT PRIMARY KEY, value TEXT NOT NULL, n INTEGER NOT NULL)"
)
_INSERT = sql("INSERT INTO contract_rows (id, value, n) VALUES ($1, $2, $3)")
_ROWS = sql("SELECT id, value, n FROM contract_rows ORDER BY id")
_ROW = sql("SELECT id, value, n FROM contract_rows WHERE id = $1")
_VALUE_IS = sql("SELECT id FROM contract_rows WHERE value = $1")
_EMPTY = sql("DELETE FROM contract_rows")


class ReadModelStoreContract:
    """The guarantees of :class:`~cqrskit.read_models.protocol.ReadModelStore`."""

    def make_read_models(self) -> AsyncIterator[ReadModelStore]:
        """Yield a fresh, empty store; clean up after the ``yield``."""
        raise NotImplementedError

    @pytest.fixture
    async def read_models(self) -> AsyncIterator[ReadModelStore]:
        """A fresh store per test with the contract's table migrated."""
        async with contextlib.asynccontextmanager(self.make_read_models)() as read_models:
            await read_models.migrate([_TABLE])
            yield read_models

    async def test_migrate_is_idempotent(self, read_models: ReadModelStore) -> None:
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(1))
        await read_models.migrate([_TABLE])
        await read_models.migrate([_TABLE])
        assert await read_models.fetch(_ROWS) == [{"id": "a", "value": "x", "n": 1}]
        assert await read_models.checkpoint("p") == _at(1)

    async def test_checkpoint_starts_at_log_start(self, read_models: ReadModelStore) -> None:
        assert await read_models.checkpoint("never-ran") == LOG_START

    # 1. Statements and checkpoint commit together.

    async def test_commit_applies_statements_and_moves_checkpoint(
        self, read_models: ReadModelStore
    ) -> None:
        await read_models.commit(
            "p", [_INSERT("a", "x", 1), _INSERT("b", "y", 2)], expected=LOG_START, position=_at(2)
        )
        await read_models.commit("p", [_INSERT("c", "z", 3)], expected=_at(2), position=_at(5))
        assert [row["id"] for row in await read_models.fetch(_ROWS)] == ["a", "b", "c"]
        assert await read_models.checkpoint("p") == _at(5)

    async def test_commit_keeps_transaction_id_of_position(
        self, read_models: ReadModelStore
    ) -> None:
        position = LogPosition(987654, 3)
        await read_models.commit("p", [], expected=LOG_START, position=position)
        assert await read_models.checkpoint("p") == position
        await read_models.commit("p", [], expected=position, position=LogPosition(987655, 4))
        assert await read_models.checkpoint("p") == LogPosition(987655, 4)

    async def test_commit_with_failing_statement_leaves_neither_statements_nor_checkpoint(
        self, read_models: ReadModelStore
    ) -> None:
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(1))
        batch = [_INSERT("b", "y", 2), _INSERT("c", "z", 3), _INSERT("a", "dup", 4)]
        with pytest.raises(CqrskitError):
            await read_models.commit("p", batch, expected=_at(1), position=_at(4))
        assert await read_models.fetch(_ROWS) == [{"id": "a", "value": "x", "n": 1}]
        assert await read_models.checkpoint("p") == _at(1)
        await read_models.commit("p", batch[:2], expected=_at(1), position=_at(4))
        assert await read_models.checkpoint("p") == _at(4)

    # 2. The checkpoint is fenced.

    async def test_fenced_checkpoint_stale_expected_raises_and_writes_nothing(
        self, read_models: ReadModelStore
    ) -> None:
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(3))
        with pytest.raises(ProjectionError):
            await read_models.commit(
                "p", [_INSERT("zombie", "old", 9)], expected=LOG_START, position=_at(2)
            )
        with pytest.raises(ProjectionError):
            await read_models.commit(
                "p", [_INSERT("ahead", "new", 9)], expected=_at(7), position=_at(9)
            )
        assert [row["id"] for row in await read_models.fetch(_ROWS)] == ["a"]
        assert await read_models.checkpoint("p") == _at(3)

    async def test_projections_have_independent_checkpoints(
        self, read_models: ReadModelStore
    ) -> None:
        await read_models.commit("p", [], expected=LOG_START, position=_at(3))
        await read_models.commit("q", [], expected=LOG_START, position=_at(1))
        assert await read_models.checkpoint("p") == _at(3)
        assert await read_models.checkpoint("q") == _at(1)
        rows = await read_models.checkpoints()
        assert [(row.name, row.position) for row in rows] == [("p", _at(3)), ("q", _at(1))]
        assert all(row.updated_at is not None for row in rows)

    # 3. Reset empties and rewinds atomically.

    async def test_reset_empties_and_rewinds(self, read_models: ReadModelStore) -> None:
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(4))
        await read_models.reset("p", [Statement(_EMPTY, ())])
        assert await read_models.fetch(_ROWS) == []
        assert await read_models.checkpoint("p") == LOG_START
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(4))
        assert await read_models.checkpoint("p") == _at(4)

    async def test_failing_reset_changes_nothing(self, read_models: ReadModelStore) -> None:
        await read_models.commit("p", [_INSERT("a", "x", 1)], expected=LOG_START, position=_at(4))
        with pytest.raises(CqrskitError):
            await read_models.reset(
                "p", [Statement(_EMPTY, ()), _INSERT("b", "y", 2), _INSERT("b", "y", 2)]
            )
        assert [row["id"] for row in await read_models.fetch(_ROWS)] == ["a"]
        assert await read_models.checkpoint("p") == _at(4)

    # Reads.

    async def test_fetch_and_fetchone(self, read_models: ReadModelStore) -> None:
        assert await read_models.fetch(_ROWS) == []
        assert await read_models.fetchone(_ROW, "a") is None
        await read_models.commit(
            "p", [_INSERT("b", "y", 2), _INSERT("a", "x", 1)], expected=LOG_START, position=_at(1)
        )
        assert await read_models.fetch(_ROWS) == [
            {"id": "a", "value": "x", "n": 1},
            {"id": "b", "value": "y", "n": 2},
        ]
        assert await read_models.fetchone(_ROW, "b") == {"id": "b", "value": "y", "n": 2}
        assert await read_models.fetchone(_ROWS) == {"id": "a", "value": "x", "n": 1}

    # 4. Values travel as bound parameters.

    async def test_bound_parameters_carry_hostile_strings_verbatim(
        self, read_models: ReadModelStore
    ) -> None:
        batch = [_INSERT(f"k{n}", text, n) for n, text in enumerate(HOSTILE_STRINGS)]
        await read_models.commit("p", batch, expected=LOG_START, position=_at(1))
        rows = await read_models.fetch(_ROWS)
        assert [row["value"] for row in rows] == list(HOSTILE_STRINGS)
        for n, text in enumerate(HOSTILE_STRINGS):
            assert await read_models.fetch(_VALUE_IS, text) == [{"id": f"k{n}"}]
        assert await read_models.checkpoint("p") == _at(1)


def _at(position: int) -> LogPosition:
    return LogPosition(0, position)
