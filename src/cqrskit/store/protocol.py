"""The event store port: the one source of truth, and the publication of every event.

Guarantees every adapter keeps (the shipped contract tests in
:mod:`cqrskit.testing.contracts` check each one):

1. ``append`` is atomic across all the streams it is given: every event is stored, or none.
2. Per stream, versions are contiguous from 1; ``(stream_id, version)`` is unique.
3. An expected version that does not match the stream's current version raises
   :class:`~cqrskit.errors.ConcurrencyError` and stores nothing.
4. When ``append`` returns, its events are durable and visible to ``read_stream``.
5. ``read_all`` returns events in log order, strictly after the position given, and never
   skips an event that a later call could still return: a reader that checkpoints the last
   position it saw loses nothing and reads nothing twice.
6. Per stream, the log order is version order.
7. Event ids are unique across the store.
8. An append given a ``command`` record stores it in the same transaction as its events
   (also when there are no events), unique per ``(scope, key)``: when the key is already
   recorded the append raises :class:`~cqrskit.idempotency.DuplicateCommand` (or, when a
   version check fails first, :class:`~cqrskit.errors.ConcurrencyError`) and stores nothing.
   A racing append with the same key waits for the first to end, then fails if it committed.
9. ``find_command`` returns a committed record with exactly the events its append stored,
   in log order.
10. Ages (``backlog``) and ``now`` use the clock that stamps ``recorded_at`` (the database
    server's on PostgreSQL), never a reader's own: a reader whose clock is off by minutes
    still measures the time an event has waited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

from cqrskit.idempotency import CommandRecord, StoredCommand
from cqrskit.messages import DomainEvent, LogPosition, RecordedEvent

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "AppendResult",
    "Backlog",
    "EventStore",
    "StreamAppend",
    "StreamPager",
]

ANY_VERSION = -1
"""Expected version that skips the optimistic check (the store numbers the events)."""
NO_STREAM = 0
"""Expected version of a stream that must not exist yet."""


class StreamAppend(NamedTuple):
    """Events to append to one stream, guarded by the version the caller last saw."""

    stream_id: str
    expected_version: int
    events: Sequence[DomainEvent]


class AppendResult(NamedTuple):
    """What an append stored: the events as recorded, in log order."""

    events: list[RecordedEvent]

    @property
    def position(self) -> LogPosition:
        """The log position of the last appended event (the consistency token)."""
        return self.events[-1].position


class Backlog(NamedTuple):
    """The readable events after a position, and how long the oldest of them has waited."""

    events: int
    oldest_age: float
    """Seconds since the oldest one's ``recorded_at`` by the clock that stamped it (0.0 when
    there are none; never negative)."""


class EventStore(Protocol):
    """Append-only storage of event streams with a global, gap-safe log."""

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        """Append events to one or several streams in one atomic transaction.

        Each stream's events get versions ``current + 1 ...``; when ``expected_version`` is
        not :data:`ANY_VERSION` it must equal the current version (0 for a new stream),
        otherwise :class:`~cqrskit.errors.ConcurrencyError` is raised and nothing is stored.
        Events whose ``event_id`` is the nil UUID get a fresh one. Raises
        :class:`~cqrskit.errors.OperationalError` when the database is unavailable; in that
        case the outcome is unknown to the caller (retry with the same command id).

        ``command`` is recorded in the same transaction (guarantee 8); an append of no
        streams with a ``command`` records only the command.
        """
        ...

    async def find_command(self, scope: str, key: str) -> StoredCommand | None:
        """Return the command recorded under ``(scope, key)`` with its events, or ``None``."""
        ...

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        """Return one stream's events with version greater than ``after_version``, in order."""
        ...

    async def stream_version(self, stream_id: str) -> int:
        """Return the stream's current version (0 when it does not exist)."""
        ...

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        """Return up to ``limit`` events of the global log strictly after ``after``.

        Only events that can no longer be preceded by a later commit are returned, so the
        caller may checkpoint the last position it received.
        """
        ...

    async def head(self) -> LogPosition:
        """Return the position of the last event ``read_all`` can currently return."""
        ...

    async def count_after(self, after: LogPosition) -> int:
        """Return how many readable events lie strictly after ``after``."""
        ...

    async def backlog(self, after: LogPosition) -> Backlog:
        """Return how many readable events lie after ``after`` and the age of the oldest.

        One round trip. The age is measured by the clock that stamped ``recorded_at``
        (guarantee 10), so projection lag does not depend on the caller's clock.
        """
        ...

    async def now(self) -> datetime:
        """Return the current time by the clock that stamps ``recorded_at`` (UTC).

        ``now() - event.recorded_at`` is how long an event has existed, whatever the
        caller's own clock says. May be an estimate (within milliseconds) that costs no
        round trip; never raises for an unreachable database.
        """
        ...

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        """Wait until an event after ``after`` is readable or ``timeout`` seconds pass.

        Returns whether new events are readable. Wake-ups are hints: callers re-read the log.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class StreamPager(Protocol):
    """Optional capability: read one stream a page at a time, with log positions.

    The bundled stores implement it; operator tools (``GET /admin/streams/{id}/events``)
    need it to page a long stream without loading it whole.
    """

    async def read_stream_records(
        self, stream_id: str, *, after_version: int = 0, limit: int
    ) -> list[RecordedEvent]:
        """Return up to ``limit`` events of the stream after ``after_version``, in order.

        Each comes with its log position and ``recorded_at``, like ``read_all``'s.
        """
        ...
