"""The aggregate cache and the read-set check, on the in-memory store.

A second repository without the cache, on the same store, plays another process: it moves
streams behind the cache's back. Whatever the cache holds, what is stored must be what a
handler decides on the store's current state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from cqrskit.aggregate import Aggregate, applies
from cqrskit.command_bus import CommandBus
from cqrskit.errors import ConcurrencyError, NotFound, RuleViolation
from cqrskit.idempotency import CommandRecord
from cqrskit.messages import LOG_START, Command, DomainEvent
from cqrskit.middleware import retry_on_conflict
from cqrskit.repository import AggregateCache, Repository
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import AppendResult, StreamAppend

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class CacheTestAdded(DomainEvent):
    amount: int


class CacheTestLimitSet(DomainEvent):
    value: int


class Tally(Aggregate):
    category = "cachetally"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.total = 0
        self.history: list[int] = []

    def add(self, amount: int) -> None:
        self._raise(CacheTestAdded(amount=amount, occurred_at=AT))

    @applies(CacheTestAdded)
    def _added(self, event: CacheTestAdded) -> None:
        self.total += event.amount
        self.history.append(event.amount)


class Limit(Aggregate):
    category = "cachelimit"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.value = 0

    def set(self, value: int) -> None:
        self._raise(CacheTestLimitSet(value=value, occurred_at=AT))

    @applies(CacheTestLimitSet)
    def _set(self, event: CacheTestLimitSet) -> None:
        self.value = event.value


class OverLimit(RuleViolation):
    pass


class Spend(Command):
    tally_id: str
    limit_id: str
    amount: int


async def spend(command: Spend, repo: Repository) -> None:
    limit = await repo.load(Limit, command.limit_id)  # only read: the read set
    tally = await repo.get(Tally, command.tally_id) or Tally(command.tally_id)
    if tally.total + command.amount > limit.value:
        raise OverLimit("over the limit")
    tally.add(command.amount)
    if tally.version == 1:
        repo.add(tally)


class CountingStore(MemoryEventStore):
    """The memory store, counting stream reads and recording appends."""

    def __init__(self) -> None:
        super().__init__()
        self.stream_reads: list[str] = []
        self.appends: list[tuple[StreamAppend, ...]] = []

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        self.stream_reads.append(stream_id)
        return await super().read_stream(stream_id, after_version=after_version)

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        self.appends.append(streams)
        return await super().append(*streams, command=command)


async def set_limit(store: MemoryEventStore, limit_id: str, value: int) -> None:
    """Move the limit stream the way another process would: no cache involved."""
    repo = Repository(store)
    limit = await repo.get(Limit, limit_id)
    if limit is None:
        limit = Limit(limit_id)
        repo.add(limit)
    limit.set(value)
    await repo.save()


async def add_directly(store: MemoryEventStore, tally_id: str, amount: int) -> None:
    repo = Repository(store)
    tally = await repo.load(Tally, tally_id)
    tally.add(amount)
    await repo.save()


def make_bus(store: MemoryEventStore, cache_size: int = 64, retries: int = 5) -> CommandBus:
    bus = CommandBus(store, [retry_on_conflict(retries)], aggregate_cache_size=cache_size)
    bus.register(Spend, spend)
    return bus


def amounts(events: Sequence[DomainEvent]) -> list[int]:
    return [e.amount for e in events if isinstance(e, CacheTestAdded)]


# AggregateCache on its own.


def saved_tally(amounts_: Sequence[int], tally_id: str = "t") -> Tally:
    tally = Tally(tally_id)
    for amount in amounts_:
        tally.add(amount)
    tally.mark_saved()
    return tally


def test_get_returns_a_private_copy_each_time() -> None:
    cache = AggregateCache(8)
    cache.put(saved_tally([1, 2]))
    first = cache.get(Tally, Tally.stream_id_for("t"))
    assert first is not None
    first.history.append(99)
    first.add(5)
    second = cache.get(Tally, Tally.stream_id_for("t"))
    assert second is not None
    assert second is not first
    assert (second.total, second.history, second.version) == (3, [1, 2], 2)
    assert second.pending_events == ()


def test_put_stores_a_copy_that_later_changes_do_not_reach() -> None:
    cache = AggregateCache(8)
    tally = saved_tally([1])
    cache.put(tally)
    tally.history.append(42)
    cached = cache.get(Tally, tally.stream_id)
    assert cached is not None
    assert cached.history == [1]


def test_put_ignores_pending_and_older_states() -> None:
    cache = AggregateCache(8)
    cache.put(saved_tally([1, 2, 3]))
    cache.put(saved_tally([7]))  # older version
    pending = saved_tally([1, 2, 3])
    pending.add(4)
    cache.put(pending)
    assert cache.version(Tally.stream_id_for("t")) == 3
    cached = cache.get(Tally, Tally.stream_id_for("t"))
    assert cached is not None
    assert cached.history == [1, 2, 3]


def test_get_with_another_class_misses() -> None:
    cache = AggregateCache(8)
    tally = saved_tally([1])
    cache.put(tally)
    assert cache.get(Limit, tally.stream_id) is None
    assert cache.misses == 1


def test_least_recently_used_entry_is_dropped_at_max_size() -> None:
    cache = AggregateCache(2)
    for name in ("a", "b"):
        cache.put(saved_tally([1], name))
    assert cache.get(Tally, Tally.stream_id_for("a")) is not None  # "b" is now the oldest
    cache.put(saved_tally([1], "c"))
    assert len(cache) == 2
    assert cache.version(Tally.stream_id_for("b")) is None
    assert cache.version(Tally.stream_id_for("a")) == 1
    assert cache.version(Tally.stream_id_for("c")) == 1


def test_size_zero_keeps_nothing_and_negative_is_refused() -> None:
    cache = AggregateCache(0)
    cache.put(saved_tally([1]))
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_size"):
        AggregateCache(-1)


def test_evict_and_clear() -> None:
    cache = AggregateCache(8)
    for name in ("a", "b", "c"):
        cache.put(saved_tally([1], name))
    cache.evict(Tally.stream_id_for("a"), "not-cached")
    assert cache.version(Tally.stream_id_for("a")) is None
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


# Repository with a cache.


async def test_cached_load_makes_no_store_read() -> None:
    store = CountingStore()
    await set_limit(store, "l", 10)
    cache = AggregateCache(8)
    first = await Repository(store, cache).load(Limit, "l")
    second = await Repository(store, cache).load(Limit, "l")
    assert store.stream_reads.count("cachelimit-l") == 2  # set_limit's and the first load
    assert second is not first
    assert second.value == 10
    assert cache.hits == 1


async def test_absence_is_never_cached() -> None:
    store = CountingStore()
    cache = AggregateCache(8)
    for _ in range(3):
        assert await Repository(store, cache).get(Tally, "missing") is None
    assert store.stream_reads == ["cachetally-missing"] * 3
    with pytest.raises(NotFound):
        await Repository(store, cache).load(Tally, "missing")
    await add_first(store, "missing", 4)
    found = await Repository(store, cache).load(Tally, "missing")
    assert found.total == 4


async def add_first(store: MemoryEventStore, tally_id: str, amount: int) -> None:
    repo = Repository(store)
    tally = Tally(tally_id)
    tally.add(amount)
    repo.add(tally)
    await repo.save()


async def test_save_appends_read_only_aggregates_with_no_events() -> None:
    for cache in (None, AggregateCache(8)):
        store = CountingStore()
        await set_limit(store, "l", 100)
        await add_first(store, "t", 1)
        store.appends.clear()
        repo = Repository(store, cache)
        await repo.load(Limit, "l")
        tally = await repo.load(Tally, "t")
        tally.add(2)
        await repo.save()
        (streams,) = store.appends
        assert [(s.stream_id, s.expected_version, len(s.events)) for s in streams] == [
            ("cachelimit-l", 1, 0),
            ("cachetally-t", 1, 1),
        ]


async def test_save_with_nothing_changed_checks_and_stores_nothing() -> None:
    store = CountingStore()
    await set_limit(store, "l", 100)
    store.appends.clear()
    repo = Repository(store, AggregateCache(8))
    await repo.load(Limit, "l")
    assert await repo.save() is None
    assert store.appends == []


async def test_successful_save_leaves_the_new_state_in_the_cache() -> None:
    store = CountingStore()
    await add_first(store, "t", 1)
    cache = AggregateCache(8)
    repo = Repository(store, cache)
    tally = await repo.load(Tally, "t")
    tally.add(2)
    await repo.save()
    assert cache.version(tally.stream_id) == 2
    reads = len(store.stream_reads)
    again = await Repository(store, cache).load(Tally, "t")
    assert (again.total, again.history, again.version) == (3, [1, 2], 2)
    assert len(store.stream_reads) == reads


async def test_conflict_evicts_every_stream_of_the_unit_of_work() -> None:
    store = CountingStore()
    await set_limit(store, "l", 100)
    await add_first(store, "t", 1)
    cache = AggregateCache(8)
    warm = Repository(store, cache)
    await warm.load(Limit, "l")
    await warm.load(Tally, "t")
    await add_directly(store, "t", 5)  # another process
    repo = Repository(store, cache)
    await repo.load(Limit, "l")
    tally = await repo.load(Tally, "t")
    assert tally.version == 1  # stale, from the cache
    tally.add(2)
    with pytest.raises(ConcurrencyError):
        await repo.save()
    assert len(cache) == 0
    assert amounts(await store.read_stream("cachetally-t")) == [1, 5]


async def test_a_handler_changing_its_copy_and_failing_leaves_the_cache_intact() -> None:
    store = CountingStore()
    await add_first(store, "t", 1)
    cache = AggregateCache(8)
    await Repository(store, cache).load(Tally, "t")
    repo = Repository(store, cache)
    tally = await repo.load(Tally, "t")
    tally.add(50)
    tally.history.append(-1)
    # The unit of work is dropped without saving, as after a rejection.
    cached = cache.get(Tally, tally.stream_id)
    assert cached is not None
    assert (cached.total, cached.history, cached.version) == (1, [1], 1)


# The command bus: stale entries never decide what is stored.


async def test_stale_read_set_conflicts_and_the_retry_decides_on_fresh_state() -> None:
    store = CountingStore()
    await set_limit(store, "l", 100)
    bus = make_bus(store)
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=10))  # caches limit 100
    await set_limit(store, "l", 30)  # another process lowers the limit
    # On the cached limit (100) this fits; on the real one (30) it does not.
    with pytest.raises(OverLimit):
        await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=50))
    assert amounts(await store.read_stream("cachetally-t")) == [10]
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=20))
    assert amounts(await store.read_stream("cachetally-t")) == [10, 20]


async def test_stale_read_set_without_retry_raises_conflict_and_stores_nothing() -> None:
    store = CountingStore()
    await set_limit(store, "l", 100)
    bus = make_bus(store, retries=1)
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=10))
    await set_limit(store, "l", 30)
    with pytest.raises(ConcurrencyError):
        await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=50))
    assert amounts(await store.read_stream("cachetally-t")) == [10]
    assert bus.cache is not None
    assert bus.cache.version("cachelimit-l") is None


async def test_rejection_on_a_stale_entry_is_decided_again_on_fresh_state() -> None:
    store = CountingStore()
    await set_limit(store, "l", 20)
    bus = make_bus(store, retries=1)  # no conflict retries: the re-decision is the bus's own
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=10))  # caches limit 20
    await set_limit(store, "l", 100)  # another process raises the limit
    result = await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=50))
    assert len(result.events) == 1
    assert amounts(await store.read_stream("cachetally-t")) == [10, 50]


async def test_rejection_on_current_state_is_not_repeated() -> None:
    store = CountingStore()
    await set_limit(store, "l", 20)
    bus = make_bus(store)
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=10))
    reads = len(store.stream_reads)
    with pytest.raises(OverLimit):
        await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=50))
    assert len(store.stream_reads) == reads  # served from the cache, checked, not reloaded


async def test_stale_written_stream_conflicts_and_retries_without_lost_update() -> None:
    store = CountingStore()
    await set_limit(store, "l", 1000)
    bus = make_bus(store)
    await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=1))
    for n in range(2, 6):
        await add_directly(store, "t", 100)  # another process, behind the cache
        await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=n))
    events = await store.read_stream("cachetally-t")
    assert [e.version for e in events] == list(range(1, 10))
    assert amounts(events) == [1, 100, 2, 100, 3, 100, 4, 100, 5]


async def test_cache_off_by_default_on_the_bus() -> None:
    store = CountingStore()
    bus = CommandBus(store)
    assert bus.cache is None
    bus.register(Spend, spend)
    await set_limit(store, "l", 100)
    for amount in (1, 2):
        await bus.dispatch(Spend(tally_id="t", limit_id="l", amount=amount))
    assert store.stream_reads.count("cachelimit-l") == 3


async def test_same_commands_store_the_same_events_with_and_without_cache() -> None:
    histories = []
    commands = [
        Spend(tally_id=f"t{n % 3}", limit_id="l", amount=n, command_id=uuid4(), timestamp=AT)
        for n in range(1, 15)
    ]
    for size in (0, 64):
        store = CountingStore()
        await set_limit(store, "l", 25)
        bus = make_bus(store, cache_size=size)
        outcomes = []
        for command in commands:
            try:
                await bus.dispatch(command)
                outcomes.append("ok")
            except OverLimit:
                outcomes.append("over")
        log = await store.read_all(after=LOG_START, limit=1000)
        histories.append((outcomes, [r.event for r in log[1:]]))
    assert histories[0] == histories[1]
    assert histories[0][0].count("over") > 0
