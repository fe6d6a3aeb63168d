"""SharedLogReader on the memory store: which reads share a query and which must not."""

from __future__ import annotations

import asyncio

import pytest

from cqrskit.messages import LOG_START, DomainEvent, LogPosition, RecordedEvent, utc_now
from cqrskit.projections.shared_reader import SharedLogReader
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import ANY_VERSION, StreamAppend


class Noted(DomainEvent):
    event_type = "tests.shared_reader.Noted"

    n: int


class GatedStore(MemoryEventStore):
    """Counts ``read_all`` queries; while ``gate`` is clear, a query's answer is held back.

    The answer is taken when the query starts, so an event appended while it is held is not
    in it: exactly a query that is still in flight on a database.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[LogPosition, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        self.queries.append((after, limit))
        page = await super().read_all(after=after, limit=limit)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return page


async def note(store: MemoryEventStore, count: int) -> None:
    events = [Noted(n=n, occurred_at=utc_now()) for n in range(count)]
    await store.append(StreamAppend("notes", ANY_VERSION, events))


async def until_queries(store: GatedStore, count: int) -> None:
    """Let the event loop run until ``count`` queries have started (bounded)."""
    for _ in range(1000):
        if len(store.queries) >= count:
            return
        await asyncio.sleep(0)
    pytest.fail(f"{count} queries did not start")


async def test_concurrent_identical_reads_share_one_query_and_get_their_own_lists() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    views = [reader.view() for _ in range(5)]
    store.gate.clear()
    reads = [asyncio.ensure_future(v.read_all(after=LOG_START, limit=10)) for v in views]
    await until_queries(store, 1)
    store.gate.set()
    pages = await asyncio.gather(*reads)
    assert store.queries == [(LOG_START, 10)]
    assert all(page == pages[0] and len(page) == 3 for page in pages)
    assert len({id(page) for page in pages}) == 5  # a caller may not change another's page
    assert (reader.requests, reader.queries) == (5, 1)


async def test_a_marked_view_does_not_take_an_answer_started_before_the_mark() -> None:
    store = GatedStore()
    await note(store, 2)
    reader = SharedLogReader(store)
    first, second = reader.view(), reader.view()
    store.gate.clear()
    stale = asyncio.ensure_future(first.read_all(after=LOG_START, limit=10))
    await until_queries(store, 1)
    await note(store, 1)  # appended while the first query is in flight: not in its answer
    second.mark()  # the second runner was woken by that append and begins a catch-up
    fresh = asyncio.ensure_future(second.read_all(after=LOG_START, limit=10))
    await until_queries(store, 2)
    store.gate.set()
    assert [len(await stale), len(await fresh)] == [2, 3]


async def test_a_view_joins_a_query_started_after_its_mark() -> None:
    store = GatedStore()
    await note(store, 2)
    reader = SharedLogReader(store)
    first, second = reader.view(), reader.view()
    second.mark()
    store.gate.clear()
    started = asyncio.ensure_future(first.read_all(after=LOG_START, limit=10))
    await until_queries(store, 1)
    joined = asyncio.ensure_future(second.read_all(after=LOG_START, limit=10))
    store.gate.set()
    assert await started == await joined
    assert len(store.queries) == 1


async def test_full_pages_are_kept_and_short_pages_are_read_again() -> None:
    store = GatedStore()
    await note(store, 5)
    reader = SharedLogReader(store)
    view = reader.view()
    full = await view.read_all(after=LOG_START, limit=4)
    assert await view.read_all(after=LOG_START, limit=4) == full
    assert await view.read_all(after=LOG_START, limit=2) == full[:2]
    assert len(store.queries) == 1
    short = await view.read_all(after=full[-1].position, limit=4)
    assert len(short) == 1
    await note(store, 1)
    # A short page reached the end of the log when it was read: it is never answered again.
    assert len(await view.read_all(after=full[-1].position, limit=4)) == 2
    # Nor is a full page asked for more than it holds.
    assert len(await view.read_all(after=LOG_START, limit=10)) == 6
    assert len(store.queries) == 4


async def test_kept_pages_are_bounded() -> None:
    store = GatedStore()
    await note(store, 10)
    reader = SharedLogReader(store, pages=2)
    view = reader.view()
    for n in range(4):
        await view.read_all(after=LogPosition(0, n), limit=1)
    assert len(store.queries) == 4
    await view.read_all(after=LogPosition(0, 3), limit=1)  # the newest two are kept...
    await view.read_all(after=LogPosition(0, 2), limit=1)
    assert len(store.queries) == 4
    await view.read_all(after=LOG_START, limit=1)  # ...the oldest were dropped
    assert len(store.queries) == 5


async def test_a_read_with_a_larger_limit_does_not_join_a_smaller_one() -> None:
    store = GatedStore()
    await note(store, 5)
    reader = SharedLogReader(store)
    view = reader.view()
    store.gate.clear()
    small = asyncio.ensure_future(view.read_all(after=LOG_START, limit=2))
    await until_queries(store, 1)
    large = asyncio.ensure_future(view.read_all(after=LOG_START, limit=10))
    await until_queries(store, 2)
    store.gate.set()
    assert [len(await small), len(await large)] == [2, 5]


async def test_a_cancelled_caller_leaves_the_query_to_the_others() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    one, other = reader.view(), reader.view()
    store.gate.clear()
    first = asyncio.ensure_future(one.read_all(after=LOG_START, limit=10))
    await until_queries(store, 1)
    second = asyncio.ensure_future(other.read_all(after=LOG_START, limit=10))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert len(await second) == 3
    assert first.cancelled()
    assert len(store.queries) == 1


async def test_a_failed_query_fails_every_caller_and_is_not_kept() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    store.gate.clear()
    store.fail = ConnectionError("database down")
    reads = [asyncio.ensure_future(reader.view().read_all(after=LOG_START, limit=3)) for _ in "ab"]
    await until_queries(store, 1)
    store.gate.set()
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    store.fail = None
    assert len(await reader.view().read_all(after=LOG_START, limit=3)) == 3
    assert len(store.queries) == 2


async def test_close_cancels_queries_in_flight() -> None:
    store = GatedStore()
    reader = SharedLogReader(store)
    store.gate.clear()
    read = asyncio.ensure_future(reader.view().read_all(after=LOG_START, limit=3))
    await until_queries(store, 1)
    await reader.close()
    with pytest.raises(asyncio.CancelledError):
        await read
