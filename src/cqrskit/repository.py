"""Load aggregates from the event store and save them with their expected versions.

A repository instance is one unit of work: it remembers what it loaded and added, and
``save`` appends every changed aggregate in one atomic call, each guarded by the version it
was loaded at. Event ids are derived from the command id, so a retried command can never
store its events twice.
"""

from __future__ import annotations

from typing import TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from cqrskit.aggregate import Aggregate
from cqrskit.errors import NotFound
from cqrskit.messages import Command, EventMetadata
from cqrskit.store.protocol import AppendResult, EventStore, StreamAppend

__all__ = ["Repository", "event_id_for"]

A = TypeVar("A", bound=Aggregate)


def event_id_for(command_id: UUID, stream_id: str, version: int) -> UUID:
    """Return the deterministic id of the event a command writes at ``stream_id@version``."""
    return uuid5(NAMESPACE_URL, f"cqrskit:{command_id}:{stream_id}:{version}")


class Repository:
    """Unit of work over an :class:`~cqrskit.store.protocol.EventStore`."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._tracked: dict[str, Aggregate] = {}

    async def get(self, cls: type[A], aggregate_id: str) -> A | None:
        """Load an aggregate, or return ``None`` when its stream has no events."""
        stream_id = cls.stream_id_for(aggregate_id)
        tracked = self._tracked.get(stream_id)
        if tracked is not None:
            if not isinstance(tracked, cls):
                raise TypeError(f"stream {stream_id} is loaded as {type(tracked).__name__}")
            return tracked
        events = await self._store.read_stream(stream_id)
        if not events:
            return None
        aggregate = cls.rehydrate(aggregate_id, events)
        self._tracked[stream_id] = aggregate
        return aggregate

    async def load(self, cls: type[A], aggregate_id: str) -> A:
        """Load an aggregate; raise :class:`~cqrskit.errors.NotFound` when it does not exist."""
        aggregate = await self.get(cls, aggregate_id)
        if aggregate is None:
            raise NotFound(cls.category, aggregate_id)
        return aggregate

    def add(self, aggregate: Aggregate) -> None:
        """Track a newly created aggregate; saving it requires that its stream is new."""
        self._tracked[aggregate.stream_id] = aggregate

    async def save(self, command: Command | None = None) -> AppendResult | None:
        """Append the pending events of every tracked aggregate in one atomic call.

        Raises :class:`~cqrskit.errors.ConcurrencyError` when any stream moved since it was
        loaded; then nothing is stored. Returns ``None`` when there was nothing to save.
        """
        changed = [a for a in self._tracked.values() if a.pending_events]
        if not changed:
            return None
        metadata = (
            EventMetadata(
                causation_id=command.command_id,
                correlation_id=command.correlation_id or command.command_id,
                user_id=command.user_id,
            )
            if command is not None
            else EventMetadata()
        )
        appends = []
        for aggregate in changed:
            events = [
                e.model_copy(
                    update={
                        "metadata": metadata,
                        "event_id": event_id_for(command.command_id, e.stream_id, e.version),
                    }
                    if command is not None
                    else {"metadata": metadata}
                )
                for e in aggregate.pending_events
            ]
            appends.append(StreamAppend(aggregate.stream_id, aggregate.loaded_version, events))
        result = await self._store.append(*appends)
        for aggregate in changed:
            aggregate.mark_saved()
        return result
