"""Poison events: bounded retries with backoff, then stop or park; retry and skip parked events.

A handler that raises is retried ``max_retries`` times with exponential backoff and jitter
(:func:`backoff_delays`). Then the projection's policy decides (class attributes
``max_retries`` and ``on_failure``, overridable by settings):

- ``stop`` (the default): the projection stays at that event, ``failed``, until the handler
  is fixed; health, metrics and the CLI show it.
- ``park``: the event is recorded in ``projection_dead_letters`` and skipped by this
  projection, and so is every later event of the same stream (their order matters), while
  other streams go on. The dead-letter rows commit in the same transaction as the batch's
  other statements and its checkpoint.

Guarantees:

1. Nothing is skipped without a record: a parked event is skipped only in the transaction that
   stores its dead letter; a skipped dead letter stays, marked ``skipped``.
2. :func:`retry_dead_letters` applies a stream's parked events in stream order, each exactly
   once, in the transaction that removes them from the table; later events of the stream flow
   again once none is parked. A retry that fails part-way applies the events before the
   failing one and keeps the rest parked.
3. A later event is parked only while its stream still has a parked event: the insert
   refuses (the batch is discarded and planned again) if a retry or skip emptied the stream
   meanwhile.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cqrskit.errors import NotFound, ProjectionError
from cqrskit.messages import RecordedEvent
from cqrskit.projections.projection import Projection
from cqrskit.read_models.protocol import DeadLetter, ReadModelStore, Statement, sql
from cqrskit.store.protocol import EventStore

__all__ = [
    "FailurePolicy",
    "SettleResult",
    "backoff_delays",
    "dead_letter_json",
    "describe",
    "park_statement",
    "retry_dead_letters",
    "skip_dead_letters",
]

FailurePolicy = Literal["stop", "park"]

# The first parked event of a stream blocks its later ones; a later one names its blocker by a
# subquery, which is NULL (refused by NOT NULL) once a retry or skip emptied the stream.
_PARK = sql(
    "INSERT INTO projection_dead_letters (projection, transaction_id, position, stream_id,"
    " version, event_id, event_type, error, attempts, blocked_by)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, COALESCE($10, (SELECT min(d.position)"
    " FROM projection_dead_letters d WHERE d.projection = $1 AND d.stream_id = $4"
    " AND d.status = 'parked')))"
)
_ATTEMPTS_LIMIT = 5


def describe(exc: BaseException) -> str:
    """One line naming an exception, as stored and shown for a failed event."""
    cause = exc.__cause__ if isinstance(exc, ProjectionError) and exc.__cause__ else exc
    return f"{type(cause).__name__}: {cause}"[:2000]


def backoff_delays(retries: int, *, base: float, cap: float, rng: random.Random) -> Iterator[float]:
    """Yield the wait before each retry: ``min(cap, base * 2**n)`` times a jitter in [0.5, 1)."""
    for n in range(retries):
        yield min(cap, base * 2**n) * (0.5 + rng.random() / 2)


def park_statement(
    projection: str,
    record: RecordedEvent,
    error: str,
    attempts: int,
    *,
    first: bool,
) -> Statement:
    """The insert that parks ``record`` (``first``: it starts its stream's parked run)."""
    event = record.event
    return _PARK(
        projection,
        record.position.transaction_id,
        record.position.position,
        event.stream_id,
        event.version,
        str(event.event_id),
        event.event_type,
        error,
        attempts,
        record.position.position if first else None,
    )


def dead_letter_json(row: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON (its position as a consistency token)."""
    return {
        "id": row.id,
        "projection": row.projection,
        "position": row.position.token(),
        "stream_id": row.stream_id,
        "version": row.version,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "error": row.error,
        "attempts": row.attempts,
        "status": row.status,
        "parked_at": row.parked_at.isoformat() if row.parked_at else None,
        "resolved_at": row.resolved_at.isoformat() if row.resolved_at else None,
    }


@dataclass(frozen=True)
class SettleResult:
    """What a retry or skip did to one stream's parked events."""

    projection: str
    stream_id: str
    applied: int = 0
    skipped: int = 0
    remaining: int = 0
    error: str | None = None


def _find(projections: Sequence[Projection], name: str) -> Projection:
    for projection in projections:
        if projection.name == name:
            return projection
    raise NotFound("projection", name)


async def _parked(read_models: ReadModelStore, name: str, stream_id: str) -> list[DeadLetter]:
    rows = await read_models.dead_letters(name, stream_id=stream_id)
    parked = [row for row in rows if row.status == "parked"]
    if not parked:
        raise NotFound("parked events", f"{name}/{stream_id}")
    return parked


async def retry_dead_letters(
    store: EventStore,
    read_models: ReadModelStore,
    projections: Sequence[Projection],
    name: str,
    stream_id: str,
) -> SettleResult:
    """Apply the parked events of ``stream_id`` to projection ``name``, in stream order.

    Raises :class:`~cqrskit.errors.NotFound` for an unknown projection or a stream with no
    parked events. A handler that fails again leaves that event and the later ones parked
    (its error and attempt count updated); ``error`` in the result says so.
    """
    projection = _find(projections, name)
    for attempt in range(_ATTEMPTS_LIMIT):
        parked = await _parked(read_models, name, stream_id)
        first = min(row.version for row in parked)
        events = {e.version: e for e in await store.read_stream(stream_id, after_version=first - 1)}
        statements: list[Statement] = []
        applied: list[int] = []
        failed: tuple[int, str] | None = None
        for row in parked:
            event = events.get(row.version)
            if event is None or str(event.event_id) != row.event_id:
                failed = (row.id, "the parked event is not in the log any more")
                break
            try:
                statements.extend(projection.apply(event))
            except Exception as exc:
                failed = (row.id, describe(exc))
                break
            applied.append(row.id)
        try:
            await read_models.settle_dead_letters(
                name,
                stream_id,
                expected=[row.id for row in parked],
                statements=statements,
                remove=applied,
                failed=failed,
            )
        except ProjectionError:
            if attempt == _ATTEMPTS_LIMIT - 1:
                raise
            continue  # the runner parked another event of the stream meanwhile
        return SettleResult(
            name,
            stream_id,
            applied=len(applied),
            remaining=len(parked) - len(applied),
            error=failed[1] if failed else None,
        )
    raise AssertionError("unreachable")


async def skip_dead_letters(
    read_models: ReadModelStore,
    projections: Sequence[Projection],
    name: str,
    stream_id: str,
    ids: Sequence[int] | None = None,
) -> SettleResult:
    """Mark parked events of ``stream_id`` as skipped (all of them, or only ``ids``).

    Skipped events are never applied; their rows stay in the table as the record.
    Raises :class:`~cqrskit.errors.NotFound` for an unknown projection, a stream with no
    parked events, or an id that is not one of that stream's parked events.
    """
    _find(projections, name)
    for attempt in range(_ATTEMPTS_LIMIT):
        parked = await _parked(read_models, name, stream_id)
        known = [row.id for row in parked]
        chosen = known if ids is None else list(dict.fromkeys(ids))
        unknown = set(chosen) - set(known)
        if unknown:
            raise NotFound("parked event", str(min(unknown)))
        try:
            await read_models.settle_dead_letters(
                name, stream_id, expected=known, statements=(), skip=chosen
            )
        except ProjectionError:
            if attempt == _ATTEMPTS_LIMIT - 1:
                raise
            continue
        return SettleResult(
            name, stream_id, skipped=len(chosen), remaining=len(known) - len(chosen)
        )
    raise AssertionError("unreachable")
