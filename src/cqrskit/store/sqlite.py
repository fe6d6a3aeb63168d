"""SQLite event store: one file, WAL, ``synchronous=FULL``; log order is commit order."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any
from uuid import uuid4

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.errors import ConcurrencyError, OperationalError
from cqrskit.idempotency import CommandRecord, DuplicateCommand, StoredCommand
from cqrskit.messages import NIL_UUID, DomainEvent, LogPosition, RecordedEvent, utc_now
from cqrskit.store._notify import Notifier
from cqrskit.store.mapper import deserialize, serialize
from cqrskit.store.protocol import ANY_VERSION, NO_STREAM, AppendResult, Backlog, StreamAppend

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
    """
    CREATE TABLE IF NOT EXISTS commands (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        command_type TEXT NOT NULL,
        command TEXT NOT NULL,
        first_position INTEGER,
        last_position INTEGER,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    ) WITHOUT ROWID
    """,
)

_CURRENT_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?"
# version last, so a prepared row is completed by appending the number the stream assigns.
_INSERT = (
    "INSERT INTO events (event_id, stream_id, event_type, schema_version, data, metadata,"
    " occurred_at, recorded_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = (
    "position, event_id, stream_id, version, event_type, schema_version, data, metadata,"
    " occurred_at, recorded_at"
)
_READ_STREAM = f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version > ? ORDER BY version"  # noqa: S608
_READ_STREAM_PAGE = f"{_READ_STREAM} LIMIT ?"
_READ_ALL = f"SELECT {_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"  # noqa: S608
_INSERT_COMMAND = (
    "INSERT INTO commands (scope, key, request_hash, command_type, command, first_position,"
    " last_position, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_FIND_COMMAND = (
    "SELECT request_hash, command_type, command, first_position, last_position FROM commands"
    " WHERE scope = ? AND key = ?"
)
_READ_RANGE = f"SELECT {_COLUMNS} FROM events WHERE position BETWEEN ? AND ? ORDER BY position"  # noqa: S608
_HEAD = "SELECT coalesce(max(position), 0) FROM events"
_COUNT_AFTER = "SELECT count(*) FROM events WHERE position > ?"
# isoformat() of UTC datetimes (always +00:00, six fraction digits or none) sorts as text.
_BACKLOG = "SELECT count(*), min(recorded_at) FROM events WHERE position > ?"

_Row = tuple[Any, ...]
_Planned = tuple[str, int, list[_Row], list[DomainEvent]]


def _from_row(row: _Row) -> DomainEvent:
    # Plain tuples in _COLUMNS order: cheaper than sqlite3.Row lookups by name.
    return deserialize(
        event_type=row[4],
        schema_version=row[5],
        data=row[6],
        metadata=row[7],
        event_id=row[1],
        stream_id=row[2],
        version=row[3],
        occurred_at=row[8],
    )


def _fetch_tuples(conn: sqlite3.Connection, query: str, params: tuple[Any, ...]) -> list[_Row]:
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor.execute(query, params).fetchall()


def _insert(
    conn: sqlite3.Connection, plan: list[_Planned], command: CommandRecord | None, at: str
) -> list[list[tuple[int, int]]]:
    out = _insert_events(conn, plan)
    if command is not None:
        positions = [position for placed in out for position, _ in placed]
        first, last = (min(positions), max(positions)) if positions else (None, None)
        try:
            conn.execute(_INSERT_COMMAND, (*command, first, last, at))
        except sqlite3.IntegrityError:
            raise DuplicateCommand(command.scope, command.key) from None
    return out


def _find(conn: sqlite3.Connection, scope: str, key: str) -> tuple[_Row | None, list[_Row]]:
    row = conn.execute(_FIND_COMMAND, (scope, key)).fetchone()
    if row is None or row[3] is None:
        return (None if row is None else tuple(row)), []
    return tuple(row), _fetch_tuples(conn, _READ_RANGE, (row[3], row[4]))


def _insert_events(conn: sqlite3.Connection, plan: list[_Planned]) -> list[list[tuple[int, int]]]:
    out = []
    for stream_id, expected, prepared, _ in plan:
        if expected == NO_STREAM and prepared:
            # A new stream's first event is version 1, and the (stream_id, version) index
            # refuses it when the stream exists: no version read needed.
            current = 0
        else:
            current = conn.execute(_CURRENT_VERSION, (stream_id,)).fetchone()[0]
            if expected != ANY_VERSION and expected != current:
                raise ConcurrencyError(stream_id, expected, current)
        placed = []
        for version, row in enumerate(prepared, start=current + 1):
            try:
                position = conn.execute(_INSERT, (*row, version)).lastrowid
            except sqlite3.IntegrityError:
                actual = conn.execute(_CURRENT_VERSION, (stream_id,)).fetchone()[0]
                raise ConcurrencyError(stream_id, expected, actual) from None
            if position is None:  # only for statements that insert no row
                raise OperationalError("SQLite reported no row id for an inserted event")
            placed.append((position, version))
        out.append(placed)
    return out


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

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        now = utc_now()
        recorded_at = now.isoformat()
        plan: list[_Planned] = []
        for stream_id, expected, events in streams:
            prepared: list[_Row] = []
            stamped: list[DomainEvent] = []
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
            plan.append((stream_id, expected, prepared, stamped))

        placements = await self.db.write(lambda conn: _insert(conn, plan, command, recorded_at))
        result = []
        for (stream_id, _, _, stamped), placed in zip(plan, placements, strict=True):
            for event, (position, version) in zip(stamped, placed, strict=True):
                if event.stream_id != stream_id or event.version != version:
                    event = event.model_copy(update={"stream_id": stream_id, "version": version})
                result.append(RecordedEvent(LogPosition(0, position), event, now))
        if result:
            self._known_head = max(self._known_head, result[-1].position.position)
            self._notifier.notify()
        return AppendResult(result)

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        rows = await self.db.read(
            lambda conn: _fetch_tuples(conn, _READ_STREAM, (stream_id, after_version))
        )
        return [_from_row(row) for row in rows]

    async def read_stream_records(
        self, stream_id: str, *, after_version: int = 0, limit: int
    ) -> list[RecordedEvent]:
        rows = await self.db.read(
            lambda conn: _fetch_tuples(conn, _READ_STREAM_PAGE, (stream_id, after_version, limit))
        )
        parse_time = datetime.fromisoformat
        return [
            RecordedEvent(LogPosition(0, row[0]), _from_row(row), parse_time(row[9]))
            for row in rows
        ]

    async def find_command(self, scope: str, key: str) -> StoredCommand | None:
        row, rows = await self.db.read(lambda conn: _find(conn, scope, key))
        if row is None:
            return None
        record = CommandRecord(scope, key, row[0], row[1], row[2])
        parse_time = datetime.fromisoformat
        events = [RecordedEvent(LogPosition(0, r[0]), _from_row(r), parse_time(r[9])) for r in rows]
        return StoredCommand(record, events)

    async def stream_version(self, stream_id: str) -> int:
        return int(
            await self.db.read(
                lambda conn: conn.execute(_CURRENT_VERSION, (stream_id,)).fetchone()[0]
            )
        )

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        rows = await self.db.read(
            lambda conn: _fetch_tuples(conn, _READ_ALL, (after.position, limit))
        )
        parse_time = datetime.fromisoformat
        return [
            RecordedEvent(LogPosition(0, row[0]), _from_row(row), parse_time(row[9]))
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

    async def backlog(self, after: LogPosition) -> Backlog:
        # recorded_at comes from the appending process's clock (SQLite has no server clock):
        # ages are measured by ours, exact for one process, as good as NTP across several.
        row = await self.db.read(lambda conn: conn.execute(_BACKLOG, (after.position,)).fetchone())
        if not row[0]:
            return Backlog(0, 0.0)
        age = (utc_now() - datetime.fromisoformat(row[1])).total_seconds()
        return Backlog(int(row[0]), max(0.0, age))

    async def now(self) -> datetime:
        return utc_now()

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        if await self._notifier.wait(lambda: self._known_head > after.position, timeout):
            return True
        # Another process may have written: look at the file itself.
        return (await self.head()) > after

    async def close(self) -> None:
        await self.db.close()
