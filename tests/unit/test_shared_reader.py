"""SharedLogReader on the memory store: which reads share a query and which must not."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


async def direct(store: GatedStore, after: LogPosition, limit: int) -> list[RecordedEvent]:
    """The store's own answer, not counted as a query."""
    return await MemoryEventStore.read_all(store, after=after, limit=limit)


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


async def test_read_events_are_kept_and_a_short_suffix_is_completed_at_the_tail_end() -> None:
    store = GatedStore()
    await note(store, 5)
    reader = SharedLogReader(store)
    view = reader.view()
    full = await view.read_all(after=LOG_START, limit=4)
    assert await view.read_all(after=LOG_START, limit=4) == full
    assert await view.read_all(after=LOG_START, limit=2) == full[:2]  # smaller than cached
    assert await view.read_all(after=full[0].position, limit=3) == full[1:]
    assert store.queries == [(LOG_START, 4)]
    # Cached events after the position, then the rest from a read at the tail's end.
    assert await view.read_all(after=full[1].position, limit=4) == await direct(
        store, full[1].position, 4
    )
    assert store.queries[1] == (full[-1].position, 4)
    await note(store, 1)
    # A short answer reached the end of the log when it was read: the next read asks again.
    assert len(await view.read_all(after=full[-1].position, limit=4)) == 2
    assert len(await view.read_all(after=LOG_START, limit=10)) == 6
    # Each of the two reads above asked only at the tail's end, which the one before moved.
    assert store.queries[2:] == [(LogPosition(0, 5), 4), (LogPosition(0, 6), 10)]


async def test_views_at_drifting_positions_share_the_tail() -> None:
    store = GatedStore()
    reader = SharedLogReader(store)
    views = [reader.view() for _ in range(5)]
    positions = [LOG_START] * 5
    for round_ in range(20):
        await note(store, 3)
        for k, view in enumerate(views):
            if (round_ + k) % (k + 1):
                continue  # view k reads every (k + 1)-th round: they drift apart
            view.mark()
            page = await view.read_all(after=positions[k], limit=4)
            assert page == await direct(store, positions[k], 4)
            positions[k] = page[-1].position
    assert reader.queries < reader.requests / 2, (reader.queries, reader.requests)


async def test_a_marked_view_inside_the_tail_reads_on_after_a_query_from_before() -> None:
    store = GatedStore()
    await note(store, 4)
    reader = SharedLogReader(store)
    first, second, third = reader.view(), reader.view(), reader.view()
    page = await first.read_all(after=LOG_START, limit=10)
    await note(store, 1)
    store.gate.clear()
    stale = asyncio.ensure_future(first.read_all(after=page[1].position, limit=10))
    await until_queries(store, 2)  # at the tail's end, answered with the fifth event only
    await note(store, 1)  # committed before the next runners' catch-ups begin
    second.mark()
    third.mark()
    fresh = asyncio.ensure_future(second.read_all(after=page[2].position, limit=10))
    later = asyncio.ensure_future(third.read_all(after=page[3].position, limit=10))
    joined = asyncio.ensure_future(first.read_all(after=page[0].position, limit=10))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(store.queries) == 2  # the marked ones wait for the older query, then...
    store.gate.set()
    assert [len(await stale), len(await joined)] == [3, 4]
    # ...read on from its end, together: the sixth event is in both answers.
    assert [r.position.position for r in await fresh] == [4, 5, 6]
    assert [r.position.position for r in await later] == [5, 6]
    assert store.queries[1:] == [(LogPosition(0, 4), 10), (LogPosition(0, 5), 10)]


async def test_overlapping_answers_enter_the_tail_once() -> None:
    store = GatedStore()
    await note(store, 4)
    reader = SharedLogReader(store)
    view = reader.view()
    page = await view.read_all(after=LOG_START, limit=10)
    await note(store, 3)
    store.gate.clear()
    small = asyncio.ensure_future(view.read_all(after=page[-1].position, limit=1))
    await until_queries(store, 2)
    large = asyncio.ensure_future(view.read_all(after=page[-1].position, limit=3))
    await until_queries(store, 3)  # at the same end, asking for more than the first
    store.gate.set()
    assert [len(await small), len(await large)] == [1, 3]
    assert await view.read_all(after=LOG_START, limit=10) == await direct(store, LOG_START, 10)
    assert len(store.queries) == 4


async def test_an_answer_ahead_of_the_tail_is_not_joined_to_it() -> None:
    store = GatedStore()
    await note(store, 8)
    reader = SharedLogReader(store)
    view = reader.view()
    head = await view.read_all(after=LOG_START, limit=2)
    # A runner whose checkpoint is ahead of the tail (restored at start): a plain read...
    assert await view.read_all(after=LogPosition(0, 5), limit=2) == await direct(
        store, LogPosition(0, 5), 2
    )
    # ...whose answer does not bridge the gap: events 3 to 5 are read, not skipped.
    assert await view.read_all(after=head[-1].position, limit=5) == await direct(
        store, head[-1].position, 5
    )


async def test_a_read_behind_the_bounded_tail_is_a_plain_store_read() -> None:
    store = GatedStore()
    await note(store, 10)
    reader = SharedLogReader(store, tail=3)
    view = reader.view()
    ahead = await view.read_all(after=LOG_START, limit=10)
    assert await view.read_all(after=ahead[6].position, limit=2) == ahead[7:9]  # kept
    assert len(store.queries) == 1
    # A rebuilt runner from the start: the tail holds only the last three events.
    assert await view.read_all(after=LOG_START, limit=2) == ahead[:2]
    assert await view.read_all(after=ahead[5].position, limit=2) == ahead[6:8]
    assert store.queries[1:] == [(LOG_START, 2), (ahead[5].position, 2)]
    # The runner's answer touched the tail, so it joined it: from there on it is cached.
    assert await view.read_all(after=ahead[6].position, limit=3) == ahead[7:]
    assert len(store.queries) == 3


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


async def test_a_cancelled_reader_inside_the_tail_leaves_the_completion_to_the_others() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    one, other = reader.view(), reader.view()
    page = await one.read_all(after=LOG_START, limit=10)
    await note(store, 2)
    store.gate.clear()
    first = asyncio.ensure_future(one.read_all(after=page[0].position, limit=10))
    await until_queries(store, 2)
    second = asyncio.ensure_future(other.read_all(after=page[1].position, limit=10))
    await asyncio.sleep(0)
    first.cancel()
    store.gate.set()
    assert [r.position.position for r in await second] == [3, 4, 5]
    assert first.cancelled()
    assert len(store.queries) == 2


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


async def test_a_failed_completion_fails_every_reader_inside_the_tail() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    page = await reader.view().read_all(after=LOG_START, limit=10)
    await note(store, 1)
    store.gate.clear()
    store.fail = ConnectionError("database down")
    reads = [
        asyncio.ensure_future(reader.view().read_all(after=r.position, limit=10)) for r in page[:2]
    ]
    await until_queries(store, 2)
    store.gate.set()
    results = await asyncio.gather(*reads, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    store.fail = None
    assert len(await reader.view().read_all(after=page[0].position, limit=10)) == 3
    assert len(store.queries) == 3


async def test_close_cancels_queries_in_flight() -> None:
    store = GatedStore()
    reader = SharedLogReader(store)
    store.gate.clear()
    read = asyncio.ensure_future(reader.view().read_all(after=LOG_START, limit=3))
    await until_queries(store, 1)
    await reader.close()
    with pytest.raises(asyncio.CancelledError):
        await read


async def test_close_forgets_the_tail() -> None:
    store = GatedStore()
    await note(store, 3)
    reader = SharedLogReader(store)
    page = await reader.view().read_all(after=LOG_START, limit=3)
    await reader.close()
    assert await reader.view().read_all(after=LOG_START, limit=3) == page
    assert len(store.queries) == 2


def test_any_reads_at_any_positions_answer_as_the_store_does() -> None:
    """Property: with appends between rounds, every answer equals ``store.read_all``."""

    @settings(max_examples=200, deadline=None)
    @given(
        tail=st.integers(0, 12),
        rounds=st.lists(
            st.tuples(
                st.integers(0, 6),  # events appended before the round
                st.lists(st.tuples(st.integers(0, 40), st.integers(1, 9)), max_size=6),
            ),
            max_size=8,
        ),
    )
    def check(tail: int, rounds: list[tuple[int, list[tuple[int, int]]]]) -> None:
        asyncio.run(play(tail, rounds))

    async def play(tail: int, rounds: list[tuple[int, list[tuple[int, int]]]]) -> None:
        store = MemoryEventStore()
        reader = SharedLogReader(store, tail=tail)
        for appended, reads in rounds:
            if appended:
                await note(store, appended)
            # Each read in a round runs concurrently with the others (nothing is appended).
            views = [reader.view() for _ in reads]
            afters = [LogPosition(0, n) for n, _ in reads]
            pages = await asyncio.gather(
                *(
                    v.read_all(after=after, limit=limit)
                    for v, after, (_, limit) in zip(views, afters, reads, strict=True)
                )
            )
            for after, (_, limit), page in zip(afters, reads, pages, strict=True):
                assert page == await store.read_all(after=after, limit=limit)
        await reader.close()

    check()
