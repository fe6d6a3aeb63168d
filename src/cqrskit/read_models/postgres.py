"""Read models and checkpoints in the same PostgreSQL database as the events.

A batch is one short transaction: the fenced checkpoint move first (so a stale writer stops
before writing anything), then the statements, grouped by text into ``executemany`` runs as far
as their declared keys allow (:mod:`cqrskit.read_models.batching`). Every transaction with an
xid holds back the log's read fence, so nothing here waits for anything else while a
transaction is open.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

from cqrskit._postgres import PostgresDatabase
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition
from cqrskit.read_models.batching import plan
from cqrskit.read_models.protocol import (
    CheckpointRow,
    DeadLetter,
    Sql,
    Statement,
    dead_letter_from_row,
)

__all__ = ["PostgresReadModelStore"]

_CHECKPOINTS = """
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name text PRIMARY KEY,
    transaction_id bigint NOT NULL DEFAULT 0,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz
)
"""
_DEAD_LETTERS = """
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    id bigserial PRIMARY KEY,
    projection text NOT NULL,
    transaction_id bigint NOT NULL,
    position bigint NOT NULL,
    stream_id text NOT NULL,
    version integer NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    status text NOT NULL DEFAULT 'parked',
    blocked_by bigint NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    UNIQUE (projection, stream_id, version)
)
"""
_DEAD_ALL = (
    "SELECT id, projection, transaction_id, position, stream_id, version, event_id, event_type,"
    " error, attempts, status, parked_at, resolved_at FROM projection_dead_letters"
    " WHERE ($1::text IS NULL OR projection = $1) AND ($2::text IS NULL OR stream_id = $2)"
    " ORDER BY projection, transaction_id, position"
)
_PARKED_STREAMS = (
    "SELECT DISTINCT stream_id FROM projection_dead_letters"
    " WHERE projection = $1 AND status = 'parked'"
)
_LOCK_CHECKPOINT = "SELECT 1 FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
_PARKED_IDS = (
    "SELECT id FROM projection_dead_letters WHERE projection = $1 AND stream_id = $2"
    " AND status = 'parked' ORDER BY transaction_id, position"
)
_DEAD_REMOVE = "DELETE FROM projection_dead_letters WHERE id = $1 AND status = 'parked'"
_DEAD_SKIP = (
    "UPDATE projection_dead_letters SET status = 'skipped', resolved_at = now()"
    " WHERE id = $1 AND status = 'parked'"
)
_DEAD_FAILED = (
    "UPDATE projection_dead_letters SET error = $2, attempts = attempts + 1 WHERE id = $1"
)
_GET = "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1"
_ALL = "SELECT name, transaction_id, position, updated_at FROM projection_checkpoints ORDER BY name"
_MOVE = (
    "UPDATE projection_checkpoints SET transaction_id = $2, position = $3, updated_at = now()"
    " WHERE name = $1 AND transaction_id = $4 AND position = $5"
)
# A lost batch is lost with its checkpoint (same transaction; the WAL keeps commit order).
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
_START = (
    "INSERT INTO projection_checkpoints (name, transaction_id, position, updated_at)"
    " VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO NOTHING"
)
_REWIND = (
    "INSERT INTO projection_checkpoints (name, transaction_id, position, updated_at)"
    " VALUES ($1, 0, 0, now()) ON CONFLICT (name) DO UPDATE"
    " SET transaction_id = 0, position = 0, updated_at = now()"
)


_TEXT = attrgetter("sql.postgres")


async def _run(conn: Any, statements: Sequence[Statement]) -> None:
    # Statements of one text go as one executemany, as far as their keys allow.
    for text, params in plan(statements, _TEXT):
        if len(params) == 1:
            await conn.execute(text, *params[0])
        else:
            await conn.executemany(text, params)


async def _move(conn: Any, name: str, expected: LogPosition, position: LogPosition) -> None:
    # The fenced checkpoint move that opens every batch (see the module docstring).
    moved = _rows_changed(await conn.execute(_MOVE, name, *position, *expected))
    if not moved and expected == LOG_START:
        moved = _rows_changed(await conn.execute(_START, name, *position))
    if not moved:
        raise ProjectionError(f"checkpoint of {name!r} moved; batch discarded")


def _rows_changed(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 1" or "INSERT 0 1".
    return int(status.rsplit(" ", 1)[-1])


class PostgresReadModelStore:
    """Read-model store on a :class:`~cqrskit._postgres.PostgresDatabase`."""

    dialect = "postgres"

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def migrate(self, ddl: Sequence[Sql]) -> None:
        await self.db.migrate(
            [_CHECKPOINTS, _DEAD_LETTERS, *(statement.postgres for statement in ddl)]
        )

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
        durable: bool = True,
    ) -> None:
        async with self.db.transaction() as conn:
            if not durable:
                await conn.execute(_ASYNC_COMMIT)
            await _move(conn, name, expected, position)
            await _run(conn, statements)

    async def copy_rows(
        self,
        table: str,
        columns: Sequence[str],
        records: Sequence[tuple[Any, ...]],
        *,
        statements: Sequence[Statement] = (),
        durable: bool = True,
    ) -> None:
        """COPY ``records`` into ``table`` in one transaction, after ``statements`` (a fence).

        Used by staged rebuilds (:mod:`cqrskit.projections.staging`) to fill a shadow
        generation in chunks; callers keep each chunk small, since the transaction holds the
        log's read fence like any other.
        """
        async with self.db.transaction() as conn:
            if not durable:
                await conn.execute(_ASYNC_COMMIT)
            await _run(conn, statements)
            await conn.copy_records_to_table(table, records=records, columns=list(columns))

    async def reset(self, name: str, statements: Sequence[Statement]) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(_REWIND, name)
            await _run(conn, statements)

    async def dead_letters(
        self, projection: str | None = None, *, stream_id: str | None = None
    ) -> list[DeadLetter]:
        rows = await self.db.fetch(_DEAD_ALL, projection, stream_id)
        return [dead_letter_from_row(row) for row in rows]

    async def parked_streams(self, projection: str) -> frozenset[str]:
        return frozenset(row[0] for row in await self.db.fetch(_PARKED_STREAMS, projection))

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
        async with self.db.transaction() as conn:
            # The checkpoint row lock orders this after (or before) any batch commit.
            await conn.execute(_LOCK_CHECKPOINT, projection)
            parked = [row[0] for row in await conn.fetch(_PARKED_IDS, projection, stream_id)]
            if parked != list(expected):
                raise ProjectionError(f"dead letters of {projection!r} changed; try again")
            await _run(conn, statements)
            if remove:
                await conn.executemany(_DEAD_REMOVE, [(i,) for i in remove])
            if skip:
                await conn.executemany(_DEAD_SKIP, [(i,) for i in skip])
            if failed is not None:
                await conn.execute(_DEAD_FAILED, *failed)

    async def close(self) -> None:
        """Close the shared pool (idempotent; the event store may have closed it first)."""
        await self.db.close()
