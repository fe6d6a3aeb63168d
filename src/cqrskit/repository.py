"""Load aggregates from the event store and save them with their expected versions.

A repository instance is one unit of work: it remembers what it loaded and added, and
``save`` appends every changed aggregate in one atomic call, each guarded by the version it
was loaded at. Aggregates that were only read go into the same call with no events, so the
store checks that they too are still at the version the decision was based on. Event ids
are derived from the command id, so a retried command can never store its events twice.

An :class:`AggregateCache` lets a repository serve loads from memory without a database
round trip. The cache can be stale (another process appended to a stream), and that never
matters for what is stored: every loaded version is checked again inside the atomic append,
so a decision on stale state ends in :class:`~cqrskit.errors.ConcurrencyError`, the cached
entries are evicted, and the retry decides on what the store holds.

Within one process the cache also keeps racing commands from deciding on a state that is
about to change: a load of a stream that a save of this process is appending to waits
(bounded) until that append has ended, then reads the state it left in the cache. Without
that, commands on hot streams (products in many orders) conflict whenever one decides while
another's append is in flight, and each conflict costs a failed append and a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar
from uuid import NAMESPACE_URL, UUID

from cqrskit.aggregate import Aggregate
from cqrskit.errors import ConcurrencyError, NotFound
from cqrskit.messages import Command, EventMetadata
from cqrskit.snapshots import Snapshotter
from cqrskit.store.protocol import AppendResult, EventStore, StreamAppend

__all__ = ["AggregateCache", "Repository", "event_id_for"]

A = TypeVar("A", bound=Aggregate)
_sha1 = hashlib.sha1
_NAMESPACE = NAMESPACE_URL.bytes
# RFC 4122 version 5, variant 10 (what uuid.UUID(bytes=..., version=5) sets).
_UUID5_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID5_SET = (5 << 76) | (0x8000 << 48)
# How long a load waits for this process's append to the same stream before reading anyway.
_SETTLE_TIMEOUT = 1.0


def event_id_for(command_id: UUID | str, stream_id: str, version: int) -> UUID:
    """Return the deterministic id of the event a command writes at ``stream_id@version``.

    ``uuid5(NAMESPACE_URL, "cqrskit:<command_id>:<stream_id>:<version>")``, computed without
    ``uuid5``'s intermediate ``UUID``: the same ids as ever, at about half the cost on every
    saved event.
    """
    name = f"cqrskit:{command_id}:{stream_id}:{version}".encode()
    digest = int.from_bytes(_sha1(_NAMESPACE + name).digest()[:16])
    return UUID(int=(digest & _UUID5_CLEAR) | _UUID5_SET)


class AggregateCache:
    """A bounded, least-recently-used map of stream id to an aggregate at a known version.

    Guarantees:

    1. The cache and its users never share mutable state: :meth:`get` returns a deep copy and
       :meth:`put` stores one.
    2. Only saved state is cached (no pending events), and an entry only moves forward: a
       put at a version not newer than the cached one is ignored.
    3. Absence is never cached: a stream that does not exist is always looked up in the store.
    4. ``max_size`` 0 disables the cache (every ``get`` misses, ``put`` keeps nothing).

    A cached aggregate may be older than the store (another process appended); callers must
    check the version when they write, as :meth:`Repository.save` does.
    """

    def __init__(self, max_size: int = 4096) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Aggregate] = OrderedDict()
        # Stream id -> (appends in flight, set when the last of them ends).
        self._appending: dict[str, tuple[int, asyncio.Event]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cls: type[A], stream_id: str) -> A | None:
        """Return a private copy of the cached aggregate, or ``None`` (also for another class)."""
        entry = self._entries.get(stream_id)
        if entry is None or type(entry) is not cls:
            self.misses += 1
            return None
        self._entries.move_to_end(stream_id)
        self.hits += 1
        return copy.deepcopy(entry)

    def version(self, stream_id: str) -> int | None:
        """Return the cached version of ``stream_id`` (``None`` when it is not cached)."""
        entry = self._entries.get(stream_id)
        return None if entry is None else entry.version

    def put(self, aggregate: Aggregate) -> None:
        """Cache a copy of ``aggregate`` unless it has pending events or is not newer."""
        if self.max_size == 0 or aggregate.pending_events:
            return
        stream_id = aggregate.stream_id
        current = self._entries.get(stream_id)
        if current is not None and current.version >= aggregate.version:
            return
        self._entries[stream_id] = copy.deepcopy(aggregate)
        self._entries.move_to_end(stream_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def evict(self, *stream_ids: str) -> None:
        """Forget the given streams (the next load reads the store)."""
        for stream_id in stream_ids:
            self._entries.pop(stream_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()

    def appending(self, stream_ids: list[str]) -> None:
        """Note that a save of this process is appending to ``stream_ids``."""
        for stream_id in stream_ids:
            count, ended = self._appending.get(stream_id) or (0, asyncio.Event())
            self._appending[stream_id] = (count + 1, ended)

    def appended(self, stream_ids: list[str]) -> None:
        """Note that an append announced with :meth:`appending` ended (stored or not)."""
        for stream_id in stream_ids:
            count, ended = self._appending.pop(stream_id)
            if count > 1:
                self._appending[stream_id] = (count - 1, ended)
            else:
                ended.set()

    async def settled(self, stream_id: str, timeout: float = _SETTLE_TIMEOUT) -> None:
        """Wait until no append of this process to ``stream_id`` is in flight (bounded).

        Appends never wait for loads, so this cannot deadlock; after ``timeout`` the caller
        reads whatever there is, and the append's version check still guards the decision.
        """
        entry = self._appending.get(stream_id)
        if entry is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry[1].wait(), timeout)


class Repository:
    """Unit of work over an :class:`~cqrskit.store.protocol.EventStore`, optionally cached.

    With a :class:`~cqrskit.snapshots.Snapshotter`, loads start from the stream's snapshot
    (when it is usable) and saves write a new one when a stream crosses its interval.
    """

    def __init__(
        self,
        store: EventStore,
        cache: AggregateCache | None = None,
        *,
        snapshots: Snapshotter | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._snapshots = snapshots
        self._tracked: dict[str, Aggregate] = {}
        self._cached_reads: dict[str, int] = {}
        self._if_exists: dict[str, Callable[[], Exception]] = {}

    async def get(self, cls: type[A], aggregate_id: str) -> A | None:
        """Load an aggregate, or return ``None`` when its stream has no events."""
        stream_id = cls.stream_id_for(aggregate_id)
        tracked = self._tracked.get(stream_id)
        if tracked is not None:
            if not isinstance(tracked, cls):
                raise TypeError(f"stream {stream_id} is loaded as {type(tracked).__name__}")
            return tracked
        cache = self._cache
        if cache is not None:
            await cache.settled(stream_id)
            cached = cache.get(cls, stream_id)
            if cached is not None:
                self._tracked[stream_id] = cached
                self._cached_reads[stream_id] = cached.version
                return cached
        aggregate = await self._from_snapshot(cls, aggregate_id)
        if aggregate is None:
            events = await self._store.read_stream(stream_id)
            if not events:
                return None
            aggregate = cls.rehydrate(aggregate_id, events)
            if self._snapshots is not None:
                self._snapshots.seen(aggregate)
        if cache is not None:
            cache.put(aggregate)
        self._tracked[stream_id] = aggregate
        return aggregate

    async def _from_snapshot(self, cls: type[A], aggregate_id: str) -> A | None:
        # The snapshot's own event is read again: if the log does not hold it (another
        # history, a truncated store), the snapshot is not used.
        if self._snapshots is None:
            return None
        restored = await self._snapshots.load(cls, aggregate_id)
        if restored is None:
            return None
        aggregate, event_id = restored
        at = aggregate.version
        events = await self._store.read_stream(aggregate.stream_id, after_version=at - 1)
        if not events or events[0].version != at or events[0].event_id != event_id:
            return None
        for event in events[1:]:
            aggregate._apply(event)
        return aggregate

    async def load(self, cls: type[A], aggregate_id: str) -> A:
        """Load an aggregate; raise :class:`~cqrskit.errors.NotFound` when it does not exist."""
        aggregate = await self.get(cls, aggregate_id)
        if aggregate is None:
            raise NotFound(cls.category, aggregate_id)
        return aggregate

    def add(
        self, aggregate: Aggregate, *, if_exists: Callable[[], Exception] | None = None
    ) -> None:
        """Track a newly created aggregate; saving it requires that its stream is new.

        ``if_exists`` builds the error :meth:`save` raises when the append finds the stream
        already there, in place of the :class:`~cqrskit.errors.ConcurrencyError` (which
        ``retry_on_conflict`` would retry in vain). The append's new-stream check runs
        inside its transaction anyway, so a create handler needs no read of its own to
        learn that the id is taken.
        """
        self._tracked[aggregate.stream_id] = aggregate
        if if_exists is not None:
            self._if_exists[aggregate.stream_id] = if_exists

    async def evict_stale(self) -> bool:
        """Check the aggregates served from the cache against the store; evict those that moved.

        Returns whether any had moved: then what was decided on them (a rejection, say) may
        not hold, and the caller can decide again with a fresh unit of work. Costs one version
        read per cached aggregate, so callers use it on their error path only.
        """
        if self._cache is None or not self._cached_reads:
            return False
        stale = [
            stream_id
            for stream_id, version in self._cached_reads.items()
            if await self._store.stream_version(stream_id) != version
        ]
        self._cache.evict(*stale)
        return bool(stale)

    async def save(self, command: Command | None = None) -> AppendResult | None:
        """Append the pending events of every tracked aggregate in one atomic call.

        Aggregates that were only read are appended with no events at the version they were
        loaded at, so the store verifies they have not moved either. Raises
        :class:`~cqrskit.errors.ConcurrencyError` when any tracked stream moved since it was
        loaded; then nothing is stored and the tracked streams leave the cache, unless a save
        in this process already cached the conflicting stream at the version the store found
        (or later). Returns
        ``None`` (and checks nothing) when no aggregate has pending events.
        """
        tracked = list(self._tracked.values())
        changed = [a for a in tracked if a.pending_events]
        if not changed:
            return None
        if command is not None:
            metadata = EventMetadata(
                causation_id=command.command_id,
                correlation_id=command.correlation_id or command.command_id,
                user_id=command.user_id,
            )
        else:
            metadata = EventMetadata()
        appends = []
        command_id = "" if command is None else str(command.command_id)
        for aggregate in tracked:
            pending = aggregate.pending_events
            if command is not None:
                events = [
                    e.model_copy(
                        update={
                            "metadata": metadata,
                            "event_id": event_id_for(command_id, e.stream_id, e.version),
                        }
                    )
                    for e in pending
                ]
            else:
                events = [e.model_copy(update={"metadata": metadata}) for e in pending]
            appends.append(StreamAppend(aggregate.stream_id, aggregate.loaded_version, events))
        cache = self._cache
        written = [aggregate.stream_id for aggregate in changed]
        if cache is not None:
            cache.appending(written)
        try:
            result = await self._append(appends)
            loaded = [(aggregate, aggregate.loaded_version) for aggregate in changed]
            for aggregate in changed:
                aggregate.mark_saved()
                if cache is not None:
                    cache.put(aggregate)
        finally:
            # After the puts: loads that waited for this append find its state cached.
            if cache is not None:
                cache.appended(written)
        if self._snapshots is not None:
            await self._snapshots.after_save(loaded, result.events)
        return result

    async def _append(self, appends: list[StreamAppend]) -> AppendResult:
        try:
            return await self._store.append(*appends)
        except BaseException as exc:
            # A conflict means some cached state is stale; any other failure leaves the
            # outcome unknown. Either way the next load must come from the store, unless
            # the conflict is explained by this process: a save here already moved the
            # conflicting stream's cache entry past the version this unit loaded.
            if self._cache is not None and not self._overtaken_here(exc):
                self._cache.evict(*self._tracked)
            if isinstance(exc, ConcurrencyError):
                taken = self._if_exists.get(exc.stream_id)
                if taken is not None:
                    raise taken() from exc
            raise

    def _overtaken_here(self, exc: BaseException) -> bool:
        """Whether a conflict came from a save in this process that the cache already holds.

        Commands racing in one process for the same stream (hot products) conflict all the
        time, and the winner's save leaves its new state in the cache. Evicting then would
        throw that state away, and with it the loser's other streams, which nothing showed
        to be stale: the retry would read them all from the store again. Keeping them is
        safe: the retry's append checks every version once more, and a stream another
        process moved conflicts then, at the cached version, and is evicted like any other.

        When the store reports the version it found, the cache must hold at least that one:
        a cache entry newer than what this unit loaded but older than the store (another
        process appended after this process's save) is stale, and keeping it would spend
        the retry on a second conflict.
        """
        if not isinstance(exc, ConcurrencyError) or self._cache is None:
            return False
        aggregate = self._tracked.get(exc.stream_id)
        cached = self._cache.version(exc.stream_id)
        if aggregate is None or cached is None or cached <= aggregate.loaded_version:
            return False
        return exc.current_version is None or cached >= exc.current_version
