"""The read-model store port: SQL read models whose writes commit with a checkpoint.

Guarantees every adapter keeps:

1. ``commit`` runs all of a batch's statements and moves the projection's checkpoint in one
   transaction: after a crash either both are stored or neither.
2. ``commit`` moves the checkpoint only from the position the caller last saw
   (``expected``); if another writer moved it meanwhile, nothing is written and
   :class:`~cqrskit.errors.ProjectionError` is raised. A stale writer can never overwrite a
   newer batch.
3. ``reset`` empties a projection's tables and rewinds its checkpoint in one transaction.
4. Values only ever travel as bound parameters.
5. ``migrate`` also creates ``projection_dead_letters``; ``settle_dead_letters`` runs a
   retry's statements, removes or marks the dead letters it names, and checks that the
   stream's parked set is the one the caller saw, in one transaction serialized with the
   projection's batch commits (see :mod:`cqrskit.projections.deadletters`).

SQL is written once with PostgreSQL's ``$1`` placeholders; :func:`sql` derives SQLite's
``?1`` form, or takes an explicit SQLite text where the dialects differ (full-text search).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from cqrskit.messages import LogPosition

__all__ = [
    "CheckpointRow",
    "DeadLetter",
    "ReadModelStore",
    "Sql",
    "Statement",
    "dead_letter_from_row",
    "sql",
]

_PLACEHOLDER = re.compile(r"\$(\d+)")


class Sql(NamedTuple):
    """One SQL text per dialect, and the keys of the rows a bound statement touches.

    ``keys`` pairs a key space with the number of the parameter that names the row
    (``(("order", 1),)``); see :mod:`cqrskit.read_models.batching` for what they promise.
    """

    postgres: str
    sqlite: str
    keys: tuple[tuple[str, int], ...] = ()

    def __call__(self, *params: Any) -> Statement:
        """Bind parameters, giving a :class:`Statement`."""
        return Statement(self, params)


def sql(
    text: str,
    *,
    sqlite: str | None = None,
    keys: Mapping[str, int | tuple[int, ...]] | None = None,
) -> Sql:
    """Declare a SQL text with ``$n`` placeholders, valid on both dialects unless overridden.

    ``keys`` (for projection statements) names the rows the statement reads or writes: for
    each key space, the number of the parameter (or parameters) naming a row, e.g.
    ``{"order": 1, "customer": 2}`` or ``{"account": (1, 2)}``. The projection promises that
    two statements sharing no key (space and value) give the same result in either order,
    which lets a batch run them grouped by text (:mod:`cqrskit.read_models.batching`). Leave
    it out for a statement that reaches rows other than through its parameters.
    """
    declared = tuple(
        (space, number)
        for space, numbers in (keys or {}).items()
        for number in ((numbers,) if isinstance(numbers, int) else numbers)
    )
    used = {int(n) for n in _PLACEHOLDER.findall(text)}
    for space, number in declared:
        if number not in used:
            raise ValueError(f"key {space!r} names ${number}, a parameter the statement never uses")
    return Sql(text, sqlite if sqlite is not None else _PLACEHOLDER.sub(r"?\1", text), declared)


class Statement(NamedTuple):
    """A SQL text with its bound parameters."""

    sql: Sql
    params: tuple[Any, ...]


class CheckpointRow(NamedTuple):
    """A projection's stored checkpoint."""

    name: str
    position: LogPosition
    updated_at: datetime | None


class DeadLetter(NamedTuple):
    """An event a projection parked after its handler kept failing (or that it skipped)."""

    id: int
    projection: str
    position: LogPosition
    stream_id: str
    version: int
    event_id: str
    event_type: str
    error: str
    attempts: int
    status: str
    """``parked`` (waiting for a retry or a skip) or ``skipped`` (never applied, on purpose)."""
    parked_at: datetime | None
    resolved_at: datetime | None


def dead_letter_from_row(
    row: Any, moment: Callable[[Any], datetime | None] = lambda value: value
) -> DeadLetter:
    """A ``projection_dead_letters`` row (asyncpg record or ``sqlite3.Row``) as a DeadLetter.

    ``moment`` turns the stored ``parked_at`` / ``resolved_at`` into datetimes (SQLite keeps
    ISO text; PostgreSQL returns them as they are).
    """
    return DeadLetter(
        row["id"],
        row["projection"],
        LogPosition(row["transaction_id"], row["position"]),
        row["stream_id"],
        row["version"],
        row["event_id"],
        row["event_type"],
        row["error"],
        row["attempts"],
        row["status"],
        moment(row["parked_at"]),
        moment(row["resolved_at"]),
    )


class ReadModelStore(Protocol):
    """SQL tables for read models, plus projection checkpoints, in one database."""

    dialect: str

    async def migrate(self, ddl: Sequence[Sql]) -> None:
        """Run idempotent DDL (``CREATE ... IF NOT EXISTS``) in one transaction."""
        ...

    async def fetch(self, query: Sql, *params: Any) -> list[Mapping[str, Any]]:
        """Run a read-only query and return its rows."""
        ...

    async def fetchone(self, query: Sql, *params: Any) -> Mapping[str, Any] | None:
        """Run a read-only query and return its first row, or ``None``."""
        ...

    async def checkpoint(self, name: str) -> LogPosition:
        """Return the projection's checkpoint (the log start when it has none)."""
        ...

    async def checkpoints(self) -> list[CheckpointRow]:
        """Return every stored checkpoint."""
        ...

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
        durable: bool = True,
    ) -> None:
        """Apply ``statements`` and move the checkpoint ``expected -> position`` atomically.

        Raises :class:`~cqrskit.errors.ProjectionError` (and writes nothing) when the stored
        checkpoint is not ``expected``. ``durable=False`` lets the store return before the
        commit is flushed (PostgreSQL ``synchronous_commit = off``): a database crash may then
        lose the batch, but only together with its checkpoint, never one without the other.
        Rebuilds use it for generations nobody reads yet.
        """
        ...

    async def reset(self, name: str, statements: Sequence[Statement]) -> None:
        """Run ``statements`` (emptying tables) and rewind the checkpoint, atomically."""
        ...

    async def dead_letters(
        self, projection: str | None = None, *, stream_id: str | None = None
    ) -> list[DeadLetter]:
        """Return dead letters (parked and skipped), by projection, stream and log order."""
        ...

    async def parked_streams(self, projection: str) -> frozenset[str]:
        """Return the streams that have parked events for ``projection``."""
        ...

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
        """Apply a retry or a skip of one stream's parked events atomically.

        In one transaction, serialized with the projection's batch commits: check that the
        ids of the stream's parked events are still ``expected`` (else raise
        :class:`~cqrskit.errors.ProjectionError` and write nothing), run ``statements``,
        delete ``remove``, mark ``skip`` as skipped, and record ``failed`` (id, error) as one
        more failed attempt.
        """
        ...
