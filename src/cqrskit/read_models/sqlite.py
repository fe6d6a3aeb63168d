"""Read models and checkpoints in the same SQLite file as the events."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import groupby
from typing import Any

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition, utc_now
from cqrskit.read_models.protocol import CheckpointRow, Sql, Statement

__all__ = ["SQLiteReadModelStore"]

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name TEXT PRIMARY KEY,
    transaction_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    updated_at TEXT
)
"""
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


def _run(conn: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    # Consecutive statements with the same text go to SQLite as one executemany.
    for text, group in groupby(statements, key=lambda s: s.sql.sqlite):
        params = [s.params for s in group]
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
    ) -> None:
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
