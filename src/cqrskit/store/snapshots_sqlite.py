"""Snapshot store in the event store's SQLite file (a ``snapshots`` table)."""

from __future__ import annotations

import sqlite3
from uuid import UUID

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.snapshots import Snapshot

__all__ = ["SQLiteSnapshotStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    state TEXT NOT NULL
)
"""
_LOAD = (
    "SELECT stream_id, version, event_id, aggregate_type, schema_version, state"
    " FROM snapshots WHERE stream_id = ?"
)
_SAVE = (
    "INSERT INTO snapshots (stream_id, version, event_id, aggregate_type, schema_version, state)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET"
    " version = excluded.version, event_id = excluded.event_id,"
    " aggregate_type = excluded.aggregate_type, schema_version = excluded.schema_version,"
    " state = excluded.state WHERE excluded.version > snapshots.version"
)


class SQLiteSnapshotStore:
    """:class:`~cqrskit.snapshots.SnapshotStore` on a :class:`~cqrskit._sqlite.SQLiteDatabase`."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    async def migrate(self) -> None:
        await self.db.write(lambda conn: conn.execute(_SCHEMA) and None)

    async def load(self, stream_id: str) -> Snapshot | None:
        def fetch(conn: sqlite3.Connection) -> tuple[object, ...] | None:
            row = conn.execute(_LOAD, (stream_id,)).fetchone()
            return None if row is None else tuple(row)

        row = await self.db.read(fetch)
        if row is None:
            return None
        sid, version, event_id, aggregate_type, schema_version, state = row
        return Snapshot(
            str(sid),
            int(str(version)),
            UUID(str(event_id)),
            str(aggregate_type),
            int(str(schema_version)),
            str(state),
        )

    async def save(self, snapshot: Snapshot) -> None:
        params = (*snapshot[:2], str(snapshot.event_id), *snapshot[3:])
        await self.db.write(lambda conn: conn.execute(_SAVE, params) and None)


def __dir__() -> list[str]:
    return list(__all__)
