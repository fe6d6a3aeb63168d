"""The aggregate cache and the read-set check, on the in-memory store.

A second repository without the cache, on the same store, plays another process: it moves
streams behind the cache's back. Whatever the cache holds, what is stored must be what a
handler decides on the store's current state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from cqrskit.aggregate import Aggregate, applies
from cqrskit.command_bus import CommandBus
from cqrskit.errors import ConcurrencyError, NotFound, OperationalError, RuleViolation
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


# Repository.add(if_exists): a taken stream is reported as the caller's error, not retried.


class Taken(RuleViolation):
    pass


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
async def test_add_with_if_exists_raises_its_error_when_the_stream_is_taken(cached: bool) -> None:
    store = CountingStore()
    await add_first(store, "t", 1)
    repo = Repository(store, AggregateCache(8) if cached else None)
    tally = Tally("t")
    tally.add(2)
    repo.add(tally, if_exists=lambda: Taken("tally t is taken"))
    with pytest.raises(Taken) as raised:
        await repo.save()
    assert isinstance(raised.value.__cause__, ConcurrencyError)
    assert raised.value.__cause__.stream_id == "cachetally-t"
    assert amounts(await store.read_stream("cachetally-t")) == [1]


async def test_if_exists_leaves_a_conflict_on_another_stream_a_conflict() -> None:
    store = CountingStore()
    await set_limit(store, "l", 100)
    cache = AggregateCache(8)
    await Repository(store, cache).load(Limit, "l")
    repo = Repository(store, cache)
    await repo.load(Limit, "l")  # from the cache, about to be stale
    await set_limit(store, "l", 5)  # another process
    tally = Tally("new")
    tally.add(1)
    repo.add(tally, if_exists=lambda: Taken("tally new is taken"))
    with pytest.raises(ConcurrencyError) as raised:
        await repo.save()
    assert raised.value.stream_id == "cachelimit-l"  # retried by retry_on_conflict, not Taken
    assert await store.read_stream("cachetally-new") == []


# A conflict with a save of this process keeps the cache; one with another process does not.


async def warm_tally_and_limit(store: CountingStore) -> AggregateCache:
    await set_limit(store, "l", 100)
    await add_first(store, "t", 1)
    cache = AggregateCache(8)
    warm = Repository(store, cache)
    await warm.load(Limit, "l")
    await warm.load(Tally, "t")
    return cache


async def test_conflict_with_a_save_of_this_process_keeps_the_cache() -> None:
    store = CountingStore()
    cache = await warm_tally_and_limit(store)
    loser, winner = Repository(store, cache), Repository(store, cache)
    for repo, amount in ((loser, 3), (winner, 2)):
        await repo.load(Limit, "l")
        tally = await repo.load(Tally, "t")
        tally.add(amount)
    await winner.save()
    with pytest.raises(ConcurrencyError):
        await loser.save()
    assert (cache.version("cachetally-t"), cache.version("cachelimit-l")) == (2, 1)
    reads = len(store.stream_reads)
    retry = Repository(store, cache)
    await retry.load(Limit, "l")
    tally = await retry.load(Tally, "t")
    assert (tally.total, tally.version) == (3, 2)
    tally.add(3)
    await retry.save()
    assert len(store.stream_reads) == reads  # the retry read nothing from the store
    assert amounts(await store.read_stream("cachetally-t")) == [1, 2, 3]


async def test_conflict_past_a_save_of_this_process_evicts_the_stale_entry() -> None:
    # This process's save put t@2 in the cache, then another process moved t to 3: the cache
    # is newer than what the loser loaded (1) but behind the store, so it must go.
    store = CountingStore()
    cache = await warm_tally_and_limit(store)
    loser, winner = Repository(store, cache), Repository(store, cache)
    for repo, amount in ((loser, 3), (winner, 2)):
        await repo.load(Limit, "l")
        tally = await repo.load(Tally, "t")
        tally.add(amount)
    await winner.save()
    await add_directly(store, "t", 100)  # another process
    with pytest.raises(ConcurrencyError):
        await loser.save()
    assert (cache.version("cachetally-t"), cache.version("cachelimit-l")) == (None, None)
    fresh = await Repository(store, cache).load(Tally, "t")
    assert (fresh.history, fresh.version) == ([1, 2, 100], 3)


class Bump(Command):
    tally_id: str
    amount: int


async def test_one_retry_after_a_conflict_past_a_save_of_this_process_decides_afresh() -> None:
    store = CountingStore()
    await add_first(store, "t", 1)
    bus = CommandBus(store, [retry_on_conflict(2)], aggregate_cache_size=64)
    paused, resume = asyncio.Event(), asyncio.Event()

    @bus.handles(Bump)
    async def bump(command: Bump, repo: Repository) -> None:
        tally = await repo.load(Tally, command.tally_id)
        if not paused.is_set():  # the first attempt of the first command decides on t@1
            paused.set()
            await resume.wait()
        tally.add(command.amount)

    first = asyncio.create_task(bus.dispatch(Bump(tally_id="t", amount=3)))
    await paused.wait()
    await bus.dispatch(Bump(tally_id="t", amount=2))  # this process: t@2, cached
    await add_directly(store, "t", 100)  # another process: t@3
    resume.set()
    result = await first  # attempt 1 conflicts; attempt 2 must not decide on t@2 again
    assert [r.event.version for r in result.events] == [4]
    assert amounts(await store.read_stream("cachetally-t")) == [1, 2, 100, 3]


# A load waits for this process's append to the same stream.


class Held:
    """One append held in the store: ``entered`` once it is in; it goes on at ``release``."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail


class GatedStore(CountingStore):
    """The counting store; appends the test asked to hold wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self._holds: list[Held] = []

    def hold(self, fail: BaseException | None = None) -> Held:
        """Hold the next append until ``release``; then raise ``fail`` instead, if given."""
        held = Held(fail)
        self._holds.append(held)
        return held

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        if self._holds:
            held = self._holds.pop(0)
            held.entered.set()
            await held.release.wait()
            if held.fail is not None:
                raise held.fail
        return await super().append(*streams, command=command)


async def waits_for_an_append(cache: AggregateCache, stream_id: str) -> bool:
    """Whether a load of ``stream_id`` would now wait for an append of this process.

    ``settled`` returns without suspending when nothing is in flight; bounded at an hour, it
    is still pending after one turn of the loop only when it waits for an append to end.
    """
    waiter = asyncio.create_task(cache.settled(stream_id, timeout=3600))
    await asyncio.sleep(0)  # one turn of the loop, not a wait for time to pass
    if waiter.done():
        await waiter
        return False
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    return True


async def add_to_t(store: GatedStore, cache: AggregateCache, amount: int) -> Repository:
    """A unit of work that loaded tally ``t`` and added ``amount`` to it."""
    repo = Repository(store, cache)
    tally = await repo.load(Tally, "t")
    tally.add(amount)
    return repo


async def hold_save(
    store: GatedStore, repo: Repository, fail: BaseException | None = None
) -> tuple[asyncio.Task[AppendResult | None], Held]:
    """Start saving ``repo``; return once its append is held in the store."""
    held = store.hold(fail)
    saving = asyncio.create_task(repo.save())
    await held.entered.wait()
    return saving, held


def start_load(store: GatedStore, cache: AggregateCache) -> asyncio.Task[Tally]:
    return asyncio.create_task(Repository(store, cache).load(Tally, "t"))


async def gated_and_warm() -> tuple[GatedStore, AggregateCache]:
    store = GatedStore()
    await set_limit(store, "l", 100)
    await add_first(store, "t", 1)
    cache = AggregateCache(8)
    await Repository(store, cache).load(Tally, "t")
    await Repository(store, cache).load(Limit, "l")
    return store, cache


async def test_a_load_waits_for_this_process_append_and_reads_what_it_left() -> None:
    store, cache = await gated_and_warm()
    saving, held = await hold_save(store, await add_to_t(store, cache, 2))
    loading = start_load(store, cache)
    await asyncio.sleep(0)  # one turn: a load that did not wait would be done now
    assert not loading.done()
    assert await waits_for_an_append(cache, "cachetally-t")
    assert not await waits_for_an_append(cache, "cachelimit-l")  # other streams do not wait
    reads = len(store.stream_reads)
    held.release.set()
    await saving
    tally = await loading
    assert (tally.history, tally.version) == ([1, 2], 2)
    assert len(store.stream_reads) == reads  # from the state the append left in the cache
    assert not await waits_for_an_append(cache, "cachetally-t")


async def test_a_load_waits_until_every_append_to_the_stream_has_ended() -> None:
    store, cache = await gated_and_warm()
    first_repo, second_repo = await add_to_t(store, cache, 2), await add_to_t(store, cache, 3)
    first, first_held = await hold_save(store, first_repo)
    second, second_held = await hold_save(store, second_repo)  # also decided on t@1
    loading = start_load(store, cache)
    first_held.release.set()
    await first
    assert not loading.done()
    assert await waits_for_an_append(cache, "cachetally-t")
    second_held.release.set()
    with pytest.raises(ConcurrencyError):
        await second
    tally = await loading
    assert (tally.history, tally.version) == ([1, 2], 2)
    assert not await waits_for_an_append(cache, "cachetally-t")


@pytest.mark.parametrize("ending", ["conflict", "error", "cancelled"])
async def test_an_append_that_fails_or_is_cancelled_releases_its_waiters(ending: str) -> None:
    store, cache = await gated_and_warm()
    fail = OperationalError("connection lost") if ending == "error" else None
    saving, held = await hold_save(store, await add_to_t(store, cache, 2), fail)
    loading = start_load(store, cache)
    await asyncio.sleep(0)
    assert not loading.done()
    if ending == "conflict":
        await add_directly(store, "t", 5)  # another process, while the append is in flight
    if ending == "cancelled":
        saving.cancel()
    else:
        held.release.set()
    with pytest.raises((ConcurrencyError, OperationalError, asyncio.CancelledError)):
        await saving
    tally = await loading
    expected = [1, 5] if ending == "conflict" else [1]
    assert tally.history == expected  # nothing cached of the failed append: read from the store
    assert not await waits_for_an_append(cache, "cachetally-t")
    assert cache.version("cachetally-t") == len(expected)


async def test_the_wait_for_an_append_is_bounded() -> None:
    store, cache = await gated_and_warm()
    saving, held = await hold_save(store, await add_to_t(store, cache, 2))
    # Returns (no TimeoutError) while the append is held; the outer bound only stops a hang.
    await asyncio.wait_for(cache.settled("cachetally-t", timeout=0.01), timeout=60)
    assert await waits_for_an_append(cache, "cachetally-t")
    held.release.set()
    await saving
    assert not await waits_for_an_append(cache, "cachetally-t")
