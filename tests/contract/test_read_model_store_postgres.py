"""The read-model store contract on PostgreSQL, each test in a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cqrskit._postgres import PostgresDatabase
from cqrskit.read_models.postgres import PostgresReadModelStore
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.testing.contracts import ReadModelStoreContract
from tests.conftest import create_postgres_database, drop_postgres_database


class TestPostgresReadModelStore(ReadModelStoreContract):
    async def make_read_models(self) -> AsyncIterator[ReadModelStore]:
        url = await create_postgres_database()
        try:
            read_models = PostgresReadModelStore(await PostgresDatabase.open(url))
            try:
                yield read_models
            finally:
                await read_models.close()
        finally:
            await drop_postgres_database(url)
