"""Choose the event store and read-model store from a database URL.

``sqlite:///data/orders.db`` (default, a file relative to the working directory;
``sqlite:////abs/path.db`` for an absolute path), ``postgresql://user@host:5432/db``, or
``memory://`` (events in memory, read models in a private in-memory SQLite database).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from cqrskit._sqlite import SQLiteDatabase, sqlite_path_from_url
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.read_models.sqlite import SQLiteReadModelStore
from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import EventStore
from cqrskit.store.sqlite import SQLiteEventStore

__all__ = ["Backend", "open_backend"]


@dataclass
class Backend:
    """An event store and a read-model store that share one database."""

    url: str
    store: EventStore
    read_models: ReadModelStore

    async def close(self) -> None:
        """Close the store's connections (the read models share them)."""
        await self.store.close()
        close = getattr(self.read_models, "close", None)
        if close is not None:
            await close()


async def open_backend(
    url: str,
    *,
    migrate: bool = True,
    pool_size: int = 10,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
) -> Backend:
    """Open the backend named by ``url``; create the event store's schema when ``migrate``.

    ``pool_size`` bounds the connections of a PostgreSQL pool (SQLite always uses one writer
    and one reader connection); ``connect_timeout`` and ``command_timeout`` bound connecting
    to PostgreSQL and each query or wait for a pooled connection (seconds).
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        db = await SQLiteDatabase.open(sqlite_path_from_url(url))
        sqlite_store = SQLiteEventStore(db)
        if migrate:
            await sqlite_store.migrate()
        return Backend(url, sqlite_store, SQLiteReadModelStore(db))
    if scheme == "memory":
        memory_db = await SQLiteDatabase.open_memory()
        return Backend(url, MemoryEventStore(), _ClosingSQLiteReadModelStore(memory_db))
    if scheme in ("postgresql", "postgres"):
        from cqrskit.store.postgres import open_postgres_backend

        return await open_postgres_backend(
            url,
            migrate=migrate,
            max_size=pool_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
        )
    raise ValueError("database URL must start with sqlite://, postgresql:// or memory://")


class _ClosingSQLiteReadModelStore(SQLiteReadModelStore):
    async def close(self) -> None:
        await self.db.close()
