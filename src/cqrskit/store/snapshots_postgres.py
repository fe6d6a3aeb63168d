"""Snapshot store in the event store's PostgreSQL database (a ``snapshots`` table)."""

from __future__ import annotations

from cqrskit._postgres import PostgresDatabase
from cqrskit.snapshots import Snapshot

__all__ = ["PostgresSnapshotStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id text PRIMARY KEY,
    version integer NOT NULL,
    event_id uuid NOT NULL,
    aggregate_type text NOT NULL,
    schema_version integer NOT NULL,
    state text NOT NULL
)
"""
_LOAD = (
    "SELECT stream_id, version, event_id, aggregate_type, schema_version, state"
    " FROM snapshots WHERE stream_id = $1"
)
_SAVE = (
    "INSERT INTO snapshots AS s (stream_id, version, event_id, aggregate_type, schema_version,"
    " state) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_id) DO UPDATE SET"
    " version = excluded.version, event_id = excluded.event_id,"
    " aggregate_type = excluded.aggregate_type, schema_version = excluded.schema_version,"
    " state = excluded.state WHERE excluded.version > s.version"
)


class PostgresSnapshotStore:
    """A :class:`~cqrskit.snapshots.SnapshotStore` on a PostgreSQL database."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def migrate(self) -> None:
        await self.db.migrate([_SCHEMA])

    async def load(self, stream_id: str) -> Snapshot | None:
        row = await self.db.fetchrow(_LOAD, stream_id)
        if row is None:
            return None
        return Snapshot(
            row["stream_id"],
            row["version"],
            row["event_id"],
            row["aggregate_type"],
            row["schema_version"],
            row["state"],
        )

    async def save(self, snapshot: Snapshot) -> None:
        async with self.db.connection() as conn:
            await conn.execute(_SAVE, *snapshot)


def __dir__() -> list[str]:
    return list(__all__)
