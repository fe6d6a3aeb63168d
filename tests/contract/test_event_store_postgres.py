"""The event store contract on PostgreSQL, each test in a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cqrskit.store.postgres import open_postgres_backend
from cqrskit.store.protocol import EventStore
from cqrskit.testing.contracts import EventStoreContract
from tests.conftest import create_postgres_database, drop_postgres_database


class TestPostgresEventStore(EventStoreContract):
    async def make_store(self) -> AsyncIterator[EventStore]:
        url = await create_postgres_database()
        try:
            backend = await open_postgres_backend(url)
            try:
                yield backend.store
            finally:
                await backend.close()
        finally:
            await drop_postgres_database(url)
