"""Lag of each projection: position, head, lag in events and in seconds."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cqrskit.messages import LogPosition, utc_now
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.store.protocol import EventStore

__all__ = ["ProjectionLag", "projection_lag"]


@dataclass(frozen=True)
class ProjectionLag:
    """How far one projection is behind the head of the log."""

    name: str
    position: LogPosition
    head: LogPosition
    lag_events: int
    lag_seconds: float
    updated_at: datetime | None


async def projection_lag(
    store: EventStore, read_models: ReadModelStore, names: list[str]
) -> list[ProjectionLag]:
    """Measure each named projection against the store's head.

    ``lag_seconds`` is the age of the oldest event the projection has not applied (0 when it
    is caught up).
    """
    head = await store.head()
    stored = {row.name: row for row in await read_models.checkpoints()}
    now = utc_now()
    out = []
    for name in names:
        row = stored.get(name)
        position = row.position if row else LogPosition(0, 0)
        lag_events = 0 if position >= head else await store.count_after(position)
        lag_seconds = 0.0
        if lag_events:
            oldest = await store.read_all(after=position, limit=1)
            if oldest:
                lag_seconds = max(0.0, (now - oldest[0].recorded_at).total_seconds())
        out.append(
            ProjectionLag(
                name, position, head, lag_events, lag_seconds, row.updated_at if row else None
            )
        )
    return out
