"""A PostgreSQL outage surfaces as OperationalError, fast, and the pool recovers by itself.

The database is reached through the fault proxy of the reliability suite, which resets every
connection (and each new one) and then heals on the same port; the server itself is never
stopped.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from cqrskit.errors import OperationalError
from cqrskit.messages import LOG_START, DomainEvent, utc_now
from cqrskit.store.postgres import PostgresEventStore, open_postgres_backend
from cqrskit.store.protocol import ANY_VERSION, StreamAppend
from tests.reliability.proxy import FaultProxy


class Pinged(DomainEvent):
    event_type = "tests.pg_outage.Pinged"


def ping(stream: str = "s") -> StreamAppend:
    return StreamAppend(stream, ANY_VERSION, [Pinged(occurred_at=utc_now())])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_unreachable_server_raises_operational_error_quickly() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    with pytest.raises(OperationalError) as caught:
        await asyncio.wait_for(open_postgres_backend(url), 15.0)
    assert "asyncpg" not in type(caught.value).__module__


async def test_outage_gives_operational_error_and_the_pool_recovers(postgres_url: str) -> None:
    proxy = FaultProxy.for_url(postgres_url)
    await proxy.start()
    backend = await open_postgres_backend(proxy.url(postgres_url))
    store = backend.store
    assert isinstance(store, PostgresEventStore)
    try:
        await store.append(ping())
        proxy.reset()
        for _ in range(3):
            with pytest.raises(OperationalError):
                await asyncio.wait_for(store.append(ping()), 15.0)
            with pytest.raises(OperationalError):
                await asyncio.wait_for(store.read_all(after=LOG_START, limit=10), 15.0)
            with pytest.raises(OperationalError):
                await asyncio.wait_for(backend.read_models.checkpoint("p"), 15.0)

        proxy.heal()

        async def recovered() -> None:
            while True:
                try:
                    await store.append(ping())
                    return
                except OperationalError:
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(recovered(), 15.0)
        assert [e.version for e in await store.read_stream("s")] == [1, 2]

        # Other sessions on the server may hold the fence back for a moment; poll state.
        async def readable() -> None:
            while len(await store.read_all(after=LOG_START, limit=10)) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        async def listening() -> None:
            while not store._listener.connected:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(readable(), 15.0)
        await asyncio.wait_for(listening(), 15.0)
        waiter = asyncio.ensure_future(store.wait_for_events(await store.head(), 60.0))
        await asyncio.sleep(0.05)
        await store.append(ping("t"))
        assert await asyncio.wait_for(waiter, 10.0) is True
    finally:
        await backend.close()
        await proxy.close()
