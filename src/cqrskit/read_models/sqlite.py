"""Read models and checkpoints in the same SQLite file as the events."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition, utc_now
from cqrskit.read_models.batching import plan
from cqrskit.read_models.protocol import (
    CheckpointRow,
    DeadLetter,
    Sql,
    Statement,
    dead_letter_from_row,
)

__all__ = ["SQLiteReadModelStore"]

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    transaction_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    updated_at TEXT
)
"""
_DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    projection TEXT NOT NULL,
    transaction_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'parked',
    blocked_by INTEGER NOT NULL,
    parked_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    resolved_at TEXT,
    UNIQUE (projection, stream_id, version)
)
"""
_DEAD_ALL = (
    "SELECT id, projection, transaction_id, position, stream_id, version, event_id, event_type,"
    " error, attempts, status, parked_at, resolved_at FROM projection_dead_letters"
    " WHERE (?1 IS NULL OR projection = ?1) AND (?2 IS NULL OR stream_id = ?2)"
    " ORDER BY projection, transaction_id, position"
)
_PARKED_STREAMS = (
    "SELECT DISTINCT stream_id FROM projection_dead_letters"
    " WHERE projection = ? AND status = 'parked'"
)
_PARKED_IDS = (
    "SELECT id FROM projection_dead_letters WHERE projection = ? AND stream_id = ?"
    " AND status = 'parked' ORDER BY transaction_id, position"
)
_DEAD_REMOVE = "DELETE FROM projection_dead_letters WHERE id = ? AND status = 'parked'"
_DEAD_SKIP = (
    "UPDATE projection_dead_letters SET status = 'skipped', resolved_at = ?"
    " WHERE id = ? AND status = 'parked'"
)
_DEAD_FAILED = "UPDATE projection_dead_letters SET error = ?, attempts = attempts + 1 WHERE id = ?"
_ENSURE = (
    "INSERT INTO projection_checkpoints (name, transaction_id, position) VALUES (?, 0, 0)"
    " ON CONFLICT (name) DO NOTHING"
)
_GET = "SELECT transaction_id, position FROM projection_checkpoints WHERE name = ?"
_ALL = "SELECT name, transaction_id, position, updated_at FROM projection_checkpoints ORDER BY name"
_MOVE = (
    "UPDATE projection_checkpoints SET transaction_id = ?, position = ?, updated_at = ?"
    " WHERE name = ? AND transaction_id = ? AND position = ?"
)
_REWIND = (
    "UPDATE projection_checkpoints SET transaction_id = 0, position = 0, updated_at = ?"
    " WHERE name = ?"
)


_TEXT = attrgetter("sql.sqlite")


def _run(conn: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    # Statements of one text go to SQLite as one executemany, as far as their keys allow.
    for text, params in plan(statements, _TEXT):
        if len(params) == 1:
            conn.execute(text, params[0])
        else:
            conn.executemany(text, params)


class SQLiteReadModelStore:
    """Read-model store on a :class:`~cqrskit._sqlite.SQLiteDatabase`."""

    dialect = "sqlite"

    def __init__(self, db: SQLiteDatabase) -> None:
        self.db = db

    async def migrate(self, ddl: Sequence[Sql]) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.execute(_CHECKPOINTS)
            conn.execute(_DEAD_LETTERS)
            for statement in ddl:
                conn.execute(statement.sqlite)

        await self.db.write(create)

    async def fetch(self, query: Sql, *params: Any) -> list[Mapping[str, Any]]:
        rows = await self.db.read(lambda conn: conn.execute(query.sqlite, params).fetchall())
        return [dict(row) for row in rows]

    async def fetchone(self, query: Sql, *params: Any) -> Mapping[str, Any] | None:
        row = await self.db.read(lambda conn: conn.execute(query.sqlite, params).fetchone())
        return None if row is None else dict(row)

    async def checkpoint(self, name: str) -> LogPosition:
        row = await self.db.read(lambda conn: conn.execute(_GET, (name,)).fetchone())
        return LOG_START if row is None else LogPosition(row[0], row[1])

    async def checkpoints(self) -> list[CheckpointRow]:
        rows = await self.db.read(lambda conn: conn.execute(_ALL).fetchall())
        return [
            CheckpointRow(
                row["name"],
                LogPosition(row["transaction_id"], row["position"]),
                datetime.fromisoformat(row["updated_at"]) if row["updated_at"] else None,
            )
            for row in rows
        ]

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
        durable: bool = True,
    ) -> None:
        # ``durable`` is not used: the connection's synchronous level cannot change inside a
        # transaction, and a SQLite commit costs one fsync of the WAL either way.
        now = utc_now().isoformat()

        def apply(conn: sqlite3.Connection) -> None:
            conn.execute(_ENSURE, (name,))
            moved = conn.execute(_MOVE, (*position, now, name, *expected)).rowcount
            if moved != 1:
                raise ProjectionError(f"checkpoint of {name!r} moved; batch discarded")
            _run(conn, statements)

        await self.db.write(apply)

    async def reset(self, name: str, statements: Sequence[Statement]) -> None:
        now = utc_now().isoformat()

        def rewind(conn: sqlite3.Connection) -> None:
            conn.execute(_ENSURE, (name,))
            _run(conn, statements)
            conn.execute(_REWIND, (now, name))

        await self.db.write(rewind)

    async def dead_letters(
        self, projection: str | None = None, *, stream_id: str | None = None
    ) -> list[DeadLetter]:
        rows = await self.db.read(
            lambda conn: conn.execute(_DEAD_ALL, (projection, stream_id)).fetchall()
        )
        return [dead_letter_from_row(row, _moment) for row in rows]

    async def parked_streams(self, projection: str) -> frozenset[str]:
        rows = await self.db.read(
            lambda conn: conn.execute(_PARKED_STREAMS, (projection,)).fetchall()
        )
        return frozenset(row[0] for row in rows)

    async def settle_dead_letters(
        self,
        projection: str,
        stream_id: str,
        *,
        expected: Sequence[int],
        statements: Sequence[Statement],
        remove: Sequence[int] = (),
        skip: Sequence[int] = (),
        failed: tuple[int, str] | None = None,
    ) -> None:
        now = utc_now().isoformat()

        def settle(conn: sqlite3.Connection) -> None:
            # BEGIN IMMEDIATE: batch commits of the projection wait for this transaction.
            parked = [row[0] for row in conn.execute(_PARKED_IDS, (projection, stream_id))]
            if parked != list(expected):
                raise ProjectionError(f"dead letters of {projection!r} changed; try again")
            _run(conn, statements)
            conn.executemany(_DEAD_REMOVE, [(i,) for i in remove])
            conn.executemany(_DEAD_SKIP, [(now, i) for i in skip])
            if failed is not None:
                conn.execute(_DEAD_FAILED, (failed[1], failed[0]))

        await self.db.write(settle)


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
