"""Staged rebuilds: replay a projection into a private SQLite file, then COPY its rows.

A blue/green rebuild on PostgreSQL that applies the log statement by statement is bound by
the server executing them: the orders log's ten events per order are ten statements against
indexed tables, for one row in the end. A staged rebuild applies the same statements (in
their SQLite form, grouped by :func:`~cqrskit.read_models.batching.plan`) to a throwaway
SQLite file in the process, where an UPDATE is a few microseconds, and then COPYs each
table's final rows into the shadow generation: one row per order instead of ten statements.

It is used only when all of these hold, and otherwise the rebuild applies statements as
before:

- the projection says its two dialects build the same rows (``Projection.staged_rebuild``;
  the orders projections do, and ``tests/integration/test_staged_rebuild.py`` checks it);
- the read models are on PostgreSQL and the shadow starts at the beginning of the log (a
  rebuild resumed after an interruption goes on statement by statement);
- every column the shadow tables store (generated columns are left to PostgreSQL) is text or
  an integer, so SQLite's values are exactly PostgreSQL's.

Guarantees kept: the COPY goes in chunks of :data:`COPY_CHUNK` rows, each its own short
transaction run behind the live runner's fence (a worker that lost its lease writes nothing),
so the log's read fence is never held long; the shadow's checkpoint moves from the start to
the staged position only after every chunk is in, and a shadow found at the start is emptied
before it is filled (see :class:`~cqrskit.projections.rebuild.BlueGreenRebuild`), so a crash
mid-COPY leaves nothing that a retry would apply twice. The staging file lives in a private
temporary directory and is deleted afterwards; SQLite's page cache for it is capped at 64 MiB
(a larger read model spills to the file, in the system's temporary directory).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path

from cqrskit.messages import LOG_START, LogPosition, RecordedEvent
from cqrskit.projections.projection import physical_name
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.batching import plan
from cqrskit.read_models.protocol import Statement, sql

__all__ = ["COPY_CHUNK", "stage"]

_log = logging.getLogger("cqrskit.projections")

COPY_CHUNK = 5000
"""Rows per COPY transaction (a few tens of milliseconds each)."""

_COLUMNS = sql(
    "SELECT column_name, data_type FROM information_schema.columns"
    " WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER'"
    " ORDER BY ordinal_position",
    sqlite="SELECT NULL AS column_name, NULL AS data_type WHERE 0",
)
_INTEGERS = frozenset({"bigint", "integer", "smallint"})
_COPYABLE = _INTEGERS | {"text"}
_SQLITE_TEXT = attrgetter("sql.sqlite")


class _Staging:
    """The private SQLite file a projection is replayed into."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="cqrskit-stage-")
        path = Path(self.directory.name) / "stage.db"
        # Used from one worker thread at a time (asyncio.to_thread, awaited in turn).
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -65536"):
            self.conn.execute(f"PRAGMA {pragma}")

    def run(self, texts: Sequence[str]) -> None:
        for text in texts:
            self.conn.execute(text)

    def apply(self, statements: Sequence[Statement]) -> None:
        self.conn.execute("BEGIN")
        try:
            for text, params in plan(statements, _SQLITE_TEXT):
                self.conn.executemany(text, params)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def rows(self, table: str, columns: Sequence[str]) -> sqlite3.Cursor:
        # Names come from PostgreSQL's catalog of the projection's own tables (checked).
        select = ", ".join(f'"{c}"' for c in columns)
        return self.conn.execute(f"SELECT {select} FROM {table}")  # noqa: S608 - catalog names

    def close(self) -> None:
        self.conn.close()
        self.directory.cleanup()


async def _copy_plan(runner: ProjectionRunner, generation: int) -> list[tuple[str, list[str]]]:
    """Each shadow table with the columns to COPY; empty when a column type is not copyable."""
    tables = []
    for logical in runner.projection.tables:
        table = physical_name(logical, generation)
        rows = await runner.read_models.fetch(_COLUMNS, table)
        if not rows:
            continue  # a table only the SQLite form has (an FTS5 index)
        if any(row["data_type"] not in _COPYABLE for row in rows):
            return []
        names = [str(row["column_name"]) for row in rows]
        if any(not name.replace("_", "").isalnum() for name in names):
            return []
        tables.append((table, names))
    return tables


async def stage(
    shadow: ProjectionRunner,
    *,
    batch_size: int,
    progress: Callable[[LogPosition, int], None] | None = None,
) -> LogPosition | None:
    """Fill ``shadow``'s empty generation up to the log's current end through a staging file.

    Returns the shadow's new checkpoint, or ``None`` when staging does not apply (nothing was
    written; the caller rebuilds statement by statement).
    """
    read_models = shadow.read_models
    if read_models.dialect != "postgres" or not getattr(shadow.projection, "staged_rebuild", False):
        return None
    if not hasattr(read_models, "copy_rows") or shadow.fixed_generation is None:
        return None
    if await read_models.checkpoint(shadow.checkpoint_name) != LOG_START:
        return None
    generation = shadow.fixed_generation
    tables = await _copy_plan(shadow, generation)
    if not tables:
        return None
    staging = _Staging()
    try:
        projection = shadow.projection
        await asyncio.to_thread(
            staging.run, [projection.physical(s, generation).sqlite for s in projection.schema]
        )
        try:
            position, applied = await _replay(shadow, staging, batch_size, progress)
        except sqlite3.Error as exc:  # the SQLite form failed where PostgreSQL's may not
            _log.warning(
                "projection %s: staging failed (%s); applying statements", shadow.name, exc
            )
            return None
        if position == LOG_START:
            return None
        fence = [] if shadow.fence is None else [shadow.fence]
        for table, columns in tables:
            cursor = await asyncio.to_thread(staging.rows, table, columns)
            while records := await asyncio.to_thread(cursor.fetchmany, COPY_CHUNK):
                await read_models.copy_rows(
                    table, columns, records, statements=fence, durable=False
                )
        await read_models.commit(
            shadow.checkpoint_name, fence, expected=LOG_START, position=position, durable=False
        )
        _log.info(
            "projection %s: staged %d events into generation %d",
            projection.name,
            applied,
            generation,
        )
        return position
    finally:
        await asyncio.to_thread(staging.close)


async def _replay(
    shadow: ProjectionRunner,
    staging: _Staging,
    batch_size: int,
    progress: Callable[[LogPosition, int], None] | None,
) -> tuple[LogPosition, int]:
    # Pages are read ahead while the previous one is applied in the staging thread.
    store = shadow.store
    position, applied = LOG_START, 0
    page: list[RecordedEvent] = await store.read_all(after=position, limit=batch_size)
    while page:
        ahead = None
        if len(page) >= batch_size:
            ahead = asyncio.ensure_future(store.read_all(after=page[-1].position, limit=batch_size))
        try:
            await asyncio.to_thread(staging.apply, shadow._statements(page))
        except BaseException:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            raise
        position, applied = page[-1].position, applied + len(page)
        if progress is not None:
            progress(position, applied)
        if ahead is None:
            break
        page = await ahead
    return position, applied
