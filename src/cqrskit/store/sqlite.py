"""SQLite event store: one file, WAL, ``synchronous=FULL``; log order is commit order."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import uuid4

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.errors import ConcurrencyError
from cqrskit.messages import NIL_UUID, DomainEvent, LogPosition, RecordedEvent, utc_now
from cqrskit.store._notify import Notifier
from cqrskit.store.mapper import deserialize, serialize
from cqrskit.store.protocol import ANY_VERSION, AppendResult, StreamAppend

__all__ = ["SCHEMA", "SQLiteEventStore"]

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data TEXT NOT NULL,
        metadata TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        recorded_at TEXT NOT NULL,
        UNIQUE (stream_id, version)
    )
    """,
)

_CURRENT_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?"
_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,"
    " metadata, occurred_at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position"
)
_COLUMNS = (
    "position, event_id, stream_id, version, event_type, schema_version, data, metadata,"
    " occurred_at, recorded_at"
)
_READ_STREAM = f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version > ? ORDER BY version"  # noqa: S608
_READ_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"  # noqa: S608
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
_COUNT_AFTER = "SELECT count(*) FROM events WHERE position > ?"

_Staged = tuple[str, int, Sequence[DomainEvent]]


def _from_row(row: sqlite3.Row) -> DomainEvent:
    return deserialize(
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=row["data"],
        metadata=row["metadata"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        occurred_at=row["occurred_at"],
    )


class SQLiteEventStore:
    """Event store on a :class:`~cqrskit._sqlite.SQLiteDatabase`."""

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db
        self._notifier = Notifier()
        self._known_head = 0

    async def migrate(self) -> None:
        """Create the events table if it is missing (idempotent)."""

        def create(conn: sqlite3.Connection) -> int:
            for statement in SCHEMA:
                conn.execute(statement)
            return int(conn.execute(_HEAD).fetchone()[0])

        self._known_head = await self.db.write(create)

    async def append(self, *streams: StreamAppend) -> AppendResult:
        now = utc_now()
        recorded_at = now.isoformat()
        rows: list[tuple[str, int, list[tuple[Any, ...]], list[DomainEvent]]] = []
        for stream_id, expected, events in streams:
            prepared = []
            stamped = []
            for event in events:
                if event.event_id == NIL_UUID:
                    event = event.model_copy(update={"event_id": uuid4()})
                s = serialize(event)
                prepared.append(
                    (
                        str(s.event_id),
                        stream_id,
                        s.event_type,
                        s.schema_version,
                        s.data,
                        s.metadata,
                        s.occurred_at.isoformat(),
                        recorded_at,
                    )
                )
                stamped.append(event)
            rows.append((stream_id, expected, prepared, stamped))

        def insert(conn: sqlite3.Connection) -> list[list[tuple[int, int]]]:
            out = []
            for stream_id, expected, prepared, _ in rows:
                current = conn.execute(_CURRENT_VERSION, (stream_id,)).fetchone()[0]
                if expected != ANY_VERSION and expected != current:
                    raise ConcurrencyError(stream_id, expected, current)
                placed = []
                for offset, (eid, sid, etype, sv, data, meta, occ, rec) in enumerate(
                    prepared, start=1
                ):
                    try:
                        (position,) = conn.execute(
                            _INSERT, (eid, sid, current + offset, etype, sv, data, meta, occ, rec)
                        ).fetchone()
                    except sqlite3.IntegrityError:
                        raise ConcurrencyError(stream_id, expected, current) from None
                    placed.append((position, current + offset))
                out.append(placed)
            return out

        placements = await self.db.write(insert)
        result = []
        for (stream_id, _, _, stamped), placed in zip(rows, placements, strict=True):
            for event, (position, version) in zip(stamped, placed, strict=True):
                event = event.model_copy(update={"stream_id": stream_id, "version": version})
                result.append(RecordedEvent(LogPosition(0, position), event, now))
        if result:
            self._known_head = max(self._known_head, result[-1].position.position)
            self._notifier.notify()
        return AppendResult(result)

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        rows = await self.db.read(
            lambda conn: conn.execute(_READ_STREAM, (stream_id, after_version)).fetchall()
        )
        return [_from_row(row) for row in rows]

    async def stream_version(self, stream_id: str) -> int:
        return int(
            await self.db.read(
                lambda conn: conn.execute(_CURRENT_VERSION, (stream_id,)).fetchone()[0]
            )
        )

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        rows = await self.db.read(
            lambda conn: conn.execute(_READ_ALL, (after.position, limit)).fetchall()
        )
        return [
            RecordedEvent(
                LogPosition(0, row["position"]),
                _from_row(row),
                datetime.fromisoformat(row["recorded_at"]),
            )
            for row in rows
        ]

    async def head(self) -> LogPosition:
        head = int(await self.db.read(lambda conn: conn.execute(_HEAD).fetchone()[0]))
        self._known_head = max(self._known_head, head)
        return LogPosition(0, head)

    async def count_after(self, after: LogPosition) -> int:
        return int(
            await self.db.read(
                lambda conn: conn.execute(_COUNT_AFTER, (after.position,)).fetchone()[0]
            )
        )

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        if await self._notifier.wait(lambda: self._known_head > after.position, timeout):
            return True
        # Another process may have written: look at the file itself.
        return (await self.head()) > after

    async def close(self) -> None:
        await self.db.close()
