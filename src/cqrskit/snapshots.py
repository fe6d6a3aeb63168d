"""Snapshots: an aggregate's state at a version, so long streams load without a full replay.

A snapshot is an optimization and never trusted over the log. Guarantees:

1. Loading with a snapshot gives the same aggregate as replaying the whole stream: the
   snapshot's state plus the events after its version.
2. A snapshot is used only when its aggregate type and ``snapshot_version`` match the class,
   its state decodes, and the stream still holds the event it was taken at (same version,
   same event id). Otherwise it is ignored and the stream is replayed.
3. A snapshot is written after a successful save whose events crossed a multiple of the
   aggregate's interval, outside the command's transaction. A failure to read or write one
   is logged and never fails a command.

An aggregate class opts in by defining ``snapshot_version`` (an ``int`` bumped whenever the
state's shape changes), ``snapshot_state() -> dict`` (JSON-compatible) and the classmethod
``from_snapshot(aggregate_id, state) -> Self``. ``snapshot_every`` on the class overrides the
global interval (``CQRSKIT_SNAPSHOT_EVERY``; 0 turns snapshots off).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, TypeVar, cast
from uuid import UUID

from cqrskit.aggregate import Aggregate
from cqrskit.messages import RecordedEvent

__all__ = [
    "MemorySnapshotStore",
    "Snapshot",
    "SnapshotStore",
    "Snapshotter",
    "snapshot_interval",
    "snapshot_store_for",
    "snapshottable",
]

A = TypeVar("A", bound=Aggregate)
_log = logging.getLogger("cqrskit.snapshots")


class Snapshot(NamedTuple):
    """One stored snapshot (the row of the ``snapshots`` table)."""

    stream_id: str
    version: int
    event_id: UUID
    """The id of the event at ``version``: a snapshot of another history is never used."""
    aggregate_type: str
    schema_version: int
    state: str
    """The aggregate's state as a JSON object text."""


class SnapshotStore(Protocol):
    """Keeps the latest snapshot per stream.

    Guarantees:

    1. ``save`` replaces the stream's snapshot only with a newer version (upsert); an older
       or equal one is dropped.
    2. ``load`` returns the latest saved snapshot, or ``None``.
    3. Errors are the framework's :class:`~cqrskit.errors.PersistenceError` tree.
    """

    async def migrate(self) -> None:
        """Create the snapshot table if it is missing (idempotent)."""
        ...

    async def load(self, stream_id: str) -> Snapshot | None:
        """Return the stream's latest snapshot, or ``None``."""
        ...

    async def save(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` unless the stream already has one at this version or later."""
        ...


class MemorySnapshotStore:
    """Snapshots in a dict (tests, and the ``memory://`` backend)."""

    def __init__(self) -> None:
        self.snapshots: dict[str, Snapshot] = {}

    async def migrate(self) -> None:
        return None

    async def load(self, stream_id: str) -> Snapshot | None:
        return self.snapshots.get(stream_id)

    async def save(self, snapshot: Snapshot) -> None:
        current = self.snapshots.get(snapshot.stream_id)
        if current is None or current.version < snapshot.version:
            self.snapshots[snapshot.stream_id] = snapshot


def snapshottable(cls: type[Aggregate]) -> bool:
    """Whether an aggregate class defines the snapshot methods and ``snapshot_version``."""
    return (
        isinstance(getattr(cls, "snapshot_version", None), int)
        and callable(getattr(cls, "snapshot_state", None))
        and callable(getattr(cls, "from_snapshot", None))
    )


def snapshot_interval(cls: type[Aggregate], default: int, overrides: Mapping[str, int]) -> int:
    """Events between snapshots for ``cls``: its ``snapshot_every``, an override by category,
    else ``default`` (0 = never)."""
    if not snapshottable(cls):
        return 0
    own = getattr(cls, "snapshot_every", None)
    if isinstance(own, int):
        return max(own, 0)
    return max(overrides.get(cls.category, default), 0)


class Snapshotter:
    """The repository's snapshot policy over a :class:`SnapshotStore`."""

    def __init__(
        self,
        store: SnapshotStore,
        every: int,
        overrides: Mapping[str, int] | None = None,
        *,
        remember: int = 100_000,
    ) -> None:
        self.store = store
        self.every = every
        self.overrides = dict(overrides or {})
        # Streams last seen shorter than their interval have no snapshot to look up: their
        # loads skip that round trip. If another process grew one since, the load replays
        # (correct, only slower) and the next save or load here corrects the entry.
        self._short: dict[str, None] = {}
        self._remember = remember

    def seen(self, aggregate: Aggregate) -> None:
        """Note the version a stream was loaded or saved at."""
        every = self.interval(type(aggregate))
        if every == 0:
            return
        stream_id = aggregate.stream_id
        if aggregate.version < every:
            self._short[stream_id] = None
            if len(self._short) > self._remember:
                del self._short[next(iter(self._short))]
        else:
            self._short.pop(stream_id, None)

    def interval(self, cls: type[Aggregate]) -> int:
        """Events between snapshots of ``cls`` (0: never)."""
        return snapshot_interval(cls, self.every, self.overrides)

    async def load(self, cls: type[A], aggregate_id: str) -> tuple[A, UUID] | None:
        """Restore ``cls`` from its snapshot; ``None`` when there is none usable.

        Returns the aggregate at the snapshot's version and the event id the snapshot was
        taken at, which the caller must find in the log (guarantee 2).
        """
        if self.interval(cls) == 0:
            return None
        stream_id = cls.stream_id_for(aggregate_id)
        if stream_id in self._short:
            return None
        try:
            snapshot = await self.store.load(stream_id)
        except Exception as exc:
            _log.warning("snapshot of %s not read (replaying): %s", stream_id, type(exc).__name__)
            return None
        if snapshot is None:
            return None
        version: int = cast(Any, cls).snapshot_version
        if snapshot.aggregate_type != cls.category or snapshot.schema_version != version:
            return None
        try:
            state = json.loads(snapshot.state)
            if not isinstance(state, dict):
                raise TypeError("snapshot state is not an object")
            aggregate: A = cast(Any, cls).from_snapshot(aggregate_id, state)
            if not isinstance(aggregate, cls):
                raise TypeError("from_snapshot returned another type")
        except Exception as exc:
            _log.warning("snapshot of %s ignored: %s", stream_id, type(exc).__name__)
            return None
        aggregate.version = snapshot.version
        return aggregate, snapshot.event_id

    async def after_save(
        self, saved: list[tuple[Aggregate, int]], events: list[RecordedEvent]
    ) -> None:
        """Snapshot the saved aggregates whose new events crossed a multiple of their interval.

        ``saved`` pairs each aggregate (pending events already marked saved) with the version
        it was loaded at; ``events`` are the append's recorded events (their ids).
        """
        ids = {(r.event.stream_id, r.event.version): r.event.event_id for r in events}
        for aggregate, loaded in saved:
            self.seen(aggregate)
            every = self.interval(type(aggregate))
            if every == 0 or loaded // every == aggregate.version // every:
                continue
            event_id = ids.get((aggregate.stream_id, aggregate.version))
            if event_id is None:
                continue
            try:
                state = json.dumps(cast(Any, aggregate).snapshot_state(), separators=(",", ":"))
                await self.store.save(
                    Snapshot(
                        aggregate.stream_id,
                        aggregate.version,
                        event_id,
                        aggregate.category,
                        cast(Any, aggregate).snapshot_version,
                        state,
                    )
                )
            except Exception as exc:
                _log.warning(
                    "snapshot of %s not written: %s", aggregate.stream_id, type(exc).__name__
                )


def snapshot_store_for(store: object) -> SnapshotStore:
    """The snapshot store that lives beside an event store (same database)."""
    from cqrskit.store.sqlite import SQLiteEventStore

    if isinstance(store, SQLiteEventStore):
        from cqrskit.store.snapshots_sqlite import SQLiteSnapshotStore

        return SQLiteSnapshotStore(store.db)
    if type(store).__name__ == "PostgresEventStore":
        from cqrskit.store.postgres import PostgresEventStore
        from cqrskit.store.snapshots_postgres import PostgresSnapshotStore

        if isinstance(store, PostgresEventStore):
            return PostgresSnapshotStore(store.db)
    return MemorySnapshotStore()


def __dir__() -> list[str]:
    return list(__all__)
