"""The read-model store contract on a real SQLite file."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from cqrskit._sqlite import SQLiteDatabase
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.read_models.sqlite import SQLiteReadModelStore
from cqrskit.testing.contracts import ReadModelStoreContract


class TestSQLiteReadModelStore(ReadModelStoreContract):
    async def make_read_models(self) -> AsyncIterator[ReadModelStore]:
        with tempfile.TemporaryDirectory() as directory:
            db = await SQLiteDatabase.open(Path(directory) / "read-models.db")
            yield SQLiteReadModelStore(db)
            await db.close()
