"""Read models and checkpoints in the same PostgreSQL database as the events.

A batch is one short transaction: the fenced checkpoint move first (so a stale writer stops
before writing anything), then the statements, consecutive identical texts sent as one
``executemany``. Every transaction with an xid holds back the log's read fence, so nothing
here waits for anything else while a transaction is open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from cqrskit._postgres import PostgresDatabase
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition
from cqrskit.read_models.protocol import CheckpointRow, Sql, Statement

__all__ = ["PostgresReadModelStore"]

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    transaction_id bigint NOT NULL DEFAULT 0,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz
)
"""
_GET = "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1"
_ALL = "SELECT name, transaction_id, position, updated_at FROM projection_checkpoints ORDER BY name"
_MOVE = (
    "UPDATE projection_checkpoints SET transaction_id = $2, position = $3, updated_at = now()"
    " WHERE name = $1 AND transaction_id = $4 AND position = $5"
)
_START = (
    "INSERT INTO projection_checkpoints (name, transaction_id, position, updated_at)"
    " VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO NOTHING"
)
_REWIND = (
    "INSERT INTO projection_checkpoints (name, transaction_id, position, updated_at)"
    " VALUES ($1, 0, 0, now()) ON CONFLICT (name) DO UPDATE"
    " SET transaction_id = 0, position = 0, updated_at = now()"
)


async def _run(conn: Any, statements: Sequence[Statement]) -> None:
    for text, group in groupby(statements, key=lambda s: s.sql.postgres):
        params = [s.params for s in group]
        if len(params) == 1:
            await conn.execute(text, *params[0])
        else:
            await conn.executemany(text, params)


def _rows_changed(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 1" or "INSERT 0 1".
    return int(status.rsplit(" ", 1)[-1])


class PostgresReadModelStore:
    """Read-model store on a :class:`~cqrskit._postgres.PostgresDatabase`."""

    dialect = "postgres"

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def migrate(self, ddl: Sequence[Sql]) -> None:
        await self.db.migrate([_CHECKPOINTS, *(statement.postgres for statement in ddl)])

    async def fetch(self, query: Sql, *params: Any) -> list[Mapping[str, Any]]:
        return [dict(row) for row in await self.db.fetch(query.postgres, *params)]

    async def fetchone(self, query: Sql, *params: Any) -> Mapping[str, Any] | None:
        row = await self.db.fetchrow(query.postgres, *params)
        return None if row is None else dict(row)

    async def checkpoint(self, name: str) -> LogPosition:
        row = await self.db.fetchrow(_GET, name)
        return LOG_START if row is None else LogPosition(row[0], row[1])

    async def checkpoints(self) -> list[CheckpointRow]:
        return [
            CheckpointRow(
                row["name"], LogPosition(row["transaction_id"], row["position"]), row["updated_at"]
            )
            for row in await self.db.fetch(_ALL)
        ]

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
    ) -> None:
        async with self.db.transaction() as conn:
            moved = _rows_changed(await conn.execute(_MOVE, name, *position, *expected))
            if not moved and expected == LOG_START:
                moved = _rows_changed(await conn.execute(_START, name, *position))
            if not moved:
                raise ProjectionError(f"checkpoint of {name!r} moved; batch discarded")
            await _run(conn, statements)

    async def reset(self, name: str, statements: Sequence[Statement]) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(_REWIND, name)
            await _run(conn, statements)

    async def close(self) -> None:
        """Close the shared pool (idempotent; the event store may have closed it first)."""
        await self.db.close()
