"""The event store contract on the in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cqrskit.store.memory import MemoryEventStore
from cqrskit.store.protocol import EventStore
from cqrskit.testing.contracts import EventStoreContract


class TestMemoryEventStore(EventStoreContract):
    async def make_store(self) -> AsyncIterator[EventStore]:
        store = MemoryEventStore()
        yield store
        await store.close()
