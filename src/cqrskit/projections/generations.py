"""Which generation of each projection's tables is live, and reads that follow it.

A projection that declares its schema names (``Projection.tables``/``indexes``) can keep
several generations of its tables side by side: generation 1 under the logical names
themselves (every database created before blue/green rebuilds), generation ``n`` under
``<name>__g<n>``. The ``projection_versions`` table records, per projection, the live
generation and the projection ``version`` it was built by.

Guarantees:

1. Reads through :class:`LiveReadModels` name the logical tables; each query text is
   rewritten to the live generation's physical names (cached per text and generation).
2. A switch made in this process is seen by the next read at once (:meth:`LiveTables.switched`);
   a switch made by another process dropped the old tables in the same transaction, so a
   read of them fails, the map is reloaded and the read is repeated once on the new ones.
3. A projection with no row yet is registered as generation 1: with the code's version on a
   fresh database, with version 1 when its checkpoint already moved (tables created before
   versions were recorded).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from cqrskit.messages import LOG_START
from cqrskit.projections.projection import Projection, rename_sql
from cqrskit.read_models.protocol import ReadModelStore, Sql, Statement, sql

__all__ = ["LiveReadModels", "LiveTables", "execute", "live_tables"]

VERSIONS_DDL = sql(
    "CREATE TABLE IF NOT EXISTS projection_versions (name TEXT PRIMARY KEY,"
    " generation BIGINT NOT NULL, version BIGINT NOT NULL, shadow_generation BIGINT,"
    " shadow_version BIGINT)"
)
_ALL = sql("SELECT name, generation, version FROM projection_versions")
_REGISTER = sql(
    "INSERT INTO projection_versions (name, generation, version) VALUES ($1, 1, $2)"
    " ON CONFLICT (name) DO NOTHING"
)


async def execute(read_models: ReadModelStore, statements: Sequence[Statement]) -> None:
    """Run ``statements`` in one short write transaction on the read-model database."""
    db: Any = getattr(read_models, "db", None)
    if read_models.dialect == "sqlite":

        def work(conn: Any) -> None:
            for statement in statements:
                conn.execute(statement.sql.sqlite, statement.params)

        await db.write(work)
        return
    async with db.transaction() as conn:
        for statement in statements:
            await conn.execute(statement.sql.postgres, *statement.params)


class LiveTables:
    """The live generation of every projection, cached in-process."""

    def __init__(self, read_models: ReadModelStore) -> None:
        self.read_models = read_models
        self._rows: dict[str, tuple[int, int]] | None = None
        self._names: dict[str, tuple[str, ...]] = {}

    def know(self, projections: Iterable[Projection]) -> None:
        """Learn the schema names of ``projections`` (for rewriting reads)."""
        for projection in projections:
            if projection.tables:
                self._names[projection.name] = projection.schema_names

    async def refresh(self) -> bool:
        """Reload the map from the database; return whether any generation changed."""
        try:
            rows = await self.read_models.fetch(_ALL)
        except Exception:  # no table yet: everything is generation 1
            rows = []
        loaded = {str(r["name"]): (int(r["generation"]), int(r["version"])) for r in rows}
        changed = self._rows is not None and {n: g for n, (g, _) in loaded.items()} != {
            n: g for n, (g, _) in self._rows.items()
        }
        self._rows = loaded
        return changed

    async def row(self, projection: Projection) -> tuple[int, int]:
        """Return ``(generation, version)`` of the live tables, registering them if new."""
        self.know([projection])
        if self._rows is None:
            await self.refresh()
        if projection.name not in (self._rows or {}):
            await self.read_models.migrate([VERSIONS_DDL])  # with the checkpoints table
            fresh = await self.read_models.checkpoint(projection.name) == LOG_START
            version = projection.version if fresh else 1
            await execute(self.read_models, [_REGISTER(projection.name, version)])
            await self.refresh()
        return (self._rows or {}).get(projection.name, (1, 1))

    async def generation(self, projection: Projection) -> int:
        """Return the live generation of ``projection``'s tables."""
        return (await self.row(projection))[0]

    def switched(self, name: str, generation: int, version: int) -> None:
        """Record a switch this process committed."""
        if self._rows is None:
            self._rows = {}
        self._rows[name] = (generation, version)

    def physical(self, query: Sql) -> Sql:
        """Rewrite a read's logical names to the live generation's physical names."""
        rows = self._rows or {}
        for name, names in self._names.items():
            generation = rows.get(name, (1, 1))[0]
            if generation > 1:
                query = rename_sql(query, names, generation)
        return query


_BY_STORE: weakref.WeakKeyDictionary[object, LiveTables] = weakref.WeakKeyDictionary()


def live_tables(read_models: ReadModelStore) -> LiveTables:
    """Return the one :class:`LiveTables` of a read-model store (shared in the process)."""
    tables = _BY_STORE.get(read_models)
    if tables is None:
        tables = _BY_STORE[read_models] = LiveTables(read_models)
    return tables


class LiveReadModels:
    """A read-model store whose reads go to the live generation of each projection."""

    def __init__(self, inner: ReadModelStore, projections: Iterable[Projection]) -> None:
        self._inner = inner
        self._live = live_tables(inner)
        self._live.know(projections)
        self.dialect = inner.dialect

    @classmethod
    def wrap(cls, inner: ReadModelStore, projections: Iterable[Projection]) -> ReadModelStore:
        """Return ``inner`` with live-generation reads, typed as a read-model store."""
        return cast(ReadModelStore, cls(inner, projections))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _loaded(self) -> None:
        if self._live._rows is None:
            await self._live.refresh()

    async def fetch(self, query: Sql, *params: Any) -> list[Mapping[str, Any]]:
        await self._loaded()
        text = self._live.physical(query)
        try:
            return await self._inner.fetch(text, *params)
        except Exception:
            again = await self._after_failure(query, text)
            if again is None:
                raise
            return await self._inner.fetch(again, *params)

    async def fetchone(self, query: Sql, *params: Any) -> Mapping[str, Any] | None:
        await self._loaded()
        text = self._live.physical(query)
        try:
            return await self._inner.fetchone(text, *params)
        except Exception:
            again = await self._after_failure(query, text)
            if again is None:
                raise
            return await self._inner.fetchone(again, *params)

    async def _after_failure(self, query: Sql, text: Sql) -> Sql | None:
        # A switch (here or in another process) may have dropped the tables just read.
        await self._live.refresh()
        again = self._live.physical(query)
        return None if again == text else again
