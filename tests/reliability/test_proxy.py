"""The fault proxy itself, against the real PostgreSQL and Redis servers.

Each fault is checked for what it must do (and the cut for what it must not do): a commit
cut happens after the server committed and before the client heard, only for a matching
statement, never for a transaction that failed; a blackhole holds bytes and releases them
on healing; a reset aborts open connections and refuses new ones until healed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.conftest import require_service
from tests.reliability.proxy import FaultProxy

pytestmark = pytest.mark.faults

DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
BOUND = 10.0
"""Upper bound for any wait here (a bound, not a timing assertion)."""


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A proxy to PostgreSQL with a table ``t``; yields it and the URL through it."""
    direct = await asyncpg.connect(postgres_url)
    try:
        await direct.execute("CREATE TABLE t (id int PRIMARY KEY)")
    finally:
        await direct.close()
    async with FaultProxy.for_url(postgres_url) as proxy:
        yield proxy, proxy.url(postgres_url)


@pytest.fixture
async def redis_proxy() -> AsyncIterator[FaultProxy]:
    require_service("Redis", "127.0.0.1", 6379)
    async with FaultProxy("127.0.0.1", 6379) as proxy:
        yield proxy


async def rows(postgres_url: str) -> list[int]:
    """The ids in ``t``, read past the proxy."""
    direct = await asyncpg.connect(postgres_url)
    try:
        return [r["id"] for r in await direct.fetch("SELECT id FROM t ORDER BY id")]
    finally:
        await direct.close()


async def connect(url: str, ssl: Any) -> asyncpg.Connection:
    return await asyncpg.connect(url, ssl=ssl, timeout=BOUND)


@pytest.mark.parametrize("ssl", ["prefer", False], ids=["ssl-request", "no-ssl-request"])
async def test_cut_after_commit_of_an_explicit_transaction(
    pg: tuple[FaultProxy, str], postgres_url: str, ssl: Any
) -> None:
    proxy, url = pg
    conn = await connect(url, ssl)
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (1)")
        fired = proxy.cut_after_commit(b"INSERT INTO t")
        await conn.fetchval("SELECT count(*) FROM t")  # not matching: forwarded
        with pytest.raises(DRIVER_ERRORS):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (2)")
        assert fired.is_set()
    finally:
        conn.terminate()
    assert await rows(postgres_url) == [1, 2]  # committed, though the client never heard
    assert proxy.stats.cut_after_commit == 1


async def test_cut_after_commit_of_a_cached_prepared_statement(
    pg: tuple[FaultProxy, str], postgres_url: str
) -> None:
    proxy, url = pg
    insert = "INSERT INTO t VALUES ($1) RETURNING id"
    conn = await connect(url, "prefer")
    try:
        assert await conn.fetchval(insert, 1) == 1  # prepared and cached: later binds by name
        proxy.cut_after_commit(b"INSERT INTO t")
        with pytest.raises(DRIVER_ERRORS):
            await conn.fetchval(insert, 2)
    finally:
        conn.terminate()
    assert await rows(postgres_url) == [1, 2]


async def test_a_failed_transaction_is_not_cut(
    pg: tuple[FaultProxy, str], postgres_url: str
) -> None:
    proxy, url = pg
    conn = await connect(url, "prefer")
    try:
        await conn.execute("INSERT INTO t VALUES (1)")
        fired = proxy.cut_after_commit(b"INSERT INTO t")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
        assert not fired.is_set()
        assert await conn.fetchval("SELECT count(*) FROM t") == 1  # still connected
        with pytest.raises(DRIVER_ERRORS):
            await conn.execute("INSERT INTO t VALUES (2)")
        assert fired.is_set()
    finally:
        conn.terminate()
    assert await rows(postgres_url) == [1, 2]


async def test_cut_then_reset_refuses_connections_until_healed(
    pg: tuple[FaultProxy, str], postgres_url: str
) -> None:
    proxy, url = pg
    bystander = await connect(url, "prefer")
    conn = await connect(url, "prefer")
    try:
        proxy.cut_after_commit(b"INSERT INTO t", then_reset=True)
        with pytest.raises(DRIVER_ERRORS):
            await conn.execute("INSERT INTO t VALUES (7)")
        with pytest.raises(DRIVER_ERRORS):
            await bystander.fetchval("SELECT 1")
        with pytest.raises(DRIVER_ERRORS):
            await connect(url, "prefer")
        assert proxy.stats.refused >= 1
        proxy.heal()
        again = await connect(url, "prefer")
        assert await again.fetchval("SELECT count(*) FROM t") == 1
        await again.close()
    finally:
        conn.terminate()
        bystander.terminate()
    assert await rows(postgres_url) == [7]


async def roundtrip(port: int) -> bytes:
    """Send a Redis PING on a new connection; return the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    try:
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), BOUND)
    finally:
        writer.close()


async def test_reset_aborts_connections_and_heal_restores_them(
    redis_proxy: FaultProxy,
) -> None:
    port = redis_proxy.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    assert await asyncio.wait_for(reader.readline(), BOUND) == b"+PONG\r\n"
    redis_proxy.reset()
    # A reset, not a clean close (which would read as b"").
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(100), BOUND)
    writer.close()
    with pytest.raises(ConnectionResetError):
        await roundtrip(port)
    assert redis_proxy.stats.reset_connections == 1
    assert redis_proxy.stats.refused == 1
    redis_proxy.heal()
    assert await roundtrip(port) == b"+PONG\r\n"


async def test_blackhole_holds_bytes_and_heal_releases_them(redis_proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", redis_proxy.port)
    redis_proxy.blackhole()
    writer.write(b"PING\r\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readline(), 0.5)
    # New connections are accepted and held too.
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", redis_proxy.port)
    writer2.write(b"ECHO hi\r\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader2.readline(), 0.2)
    redis_proxy.heal()
    assert await asyncio.wait_for(reader.readline(), BOUND) == b"+PONG\r\n"
    assert await asyncio.wait_for(reader2.readline(), BOUND) == b"$2\r\n"
    writer.close()
    writer2.close()


@pytest.mark.parametrize("direction", ["to_upstream", "to_client"])
async def test_latency_delays_the_chosen_direction(redis_proxy: FaultProxy, direction: str) -> None:
    delay = 0.2
    reader, writer = await asyncio.open_connection("127.0.0.1", redis_proxy.port)
    redis_proxy.latency(**{direction: delay})
    started = time.monotonic()
    writer.write(b"PING\r\n")
    assert await asyncio.wait_for(reader.readline(), BOUND) == b"+PONG\r\n"
    # A lower bound only: the proxy must have waited; how much longer it took is not tested.
    assert time.monotonic() - started >= delay * 0.9
    writer.close()
