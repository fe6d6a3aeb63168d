"""The event store contract on a real SQLite file."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.store.protocol import EventStore
from cqrskit.store.sqlite import SQLiteEventStore
from cqrskit.testing.contracts import EventStoreContract


class TestSQLiteEventStore(EventStoreContract):
    async def make_store(self) -> AsyncIterator[EventStore]:
        with tempfile.TemporaryDirectory() as directory:
            store = SQLiteEventStore(await SQLiteDatabase.open(Path(directory) / "events.db"))
            await store.migrate()
            yield store
            await store.close()
