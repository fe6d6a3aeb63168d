"""PostgreSQL append and log-reading details: read sets, index use, own writes, wake-ups."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from cqrskit.backend import Backend
from cqrskit.errors import ConcurrencyError
from cqrskit.messages import LOG_START, DomainEvent, utc_now
from cqrskit.store.postgres import _READ_ALL, PostgresEventStore, open_postgres_backend
from cqrskit.store.protocol import NO_STREAM, AppendResult, StreamAppend


class Noted(DomainEvent):
    event_type = "tests.pg_append.Noted"

    n: int = 0


def noted(n: int = 0) -> Noted:
    return Noted(n=n, occurred_at=utc_now())


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[Backend]:
    backend = await open_postgres_backend(postgres_url)
    try:
        yield backend
    finally:
        await backend.close()


def pg_store(backend: Backend) -> PostgresEventStore:
    assert isinstance(backend.store, PostgresEventStore)
    return backend.store


async def count_events(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def test_an_append_of_only_read_sets_checks_them_and_writes_nothing(
    backend: Backend, postgres_url: str
) -> None:
    store = pg_store(backend)
    await store.append(StreamAppend("acct-a", NO_STREAM, [noted(), noted()]))
    await store.append(StreamAppend("acct-b", NO_STREAM, [noted()]))

    result = await store.append(StreamAppend("acct-a", 2, []), StreamAppend("acct-b", 1, []))
    assert result == AppendResult([])
    one = await store.append(StreamAppend("acct-a", 2, []))
    assert one.events == []
    with pytest.raises(ConcurrencyError) as raised:
        await store.append(StreamAppend("acct-a", 2, []), StreamAppend("acct-b", 3, []))
    assert raised.value.stream_id == "acct-b"
    assert raised.value.current_version == 1
    with pytest.raises(ConcurrencyError):
        await store.append(StreamAppend("acct-missing", 1, []))
    assert await count_events(postgres_url) == 3


async def test_a_read_set_is_checked_at_commit_not_only_at_read(
    backend: Backend, postgres_url: str
) -> None:
    # Write skew: one command read X and writes Y, another read Y and writes X, at the same
    # time. Each one's read set is still current when it reads it; only one may commit.
    store = pg_store(backend)
    await store.append(StreamAppend("acct-x", NO_STREAM, [noted()]))
    await store.append(StreamAppend("acct-y", NO_STREAM, [noted()]))
    conn = await asyncpg.connect(postgres_url)
    try:
        tx = conn.transaction()
        await tx.start()
        await store.append_on(
            conn, StreamAppend("acct-x", 1, []), StreamAppend("acct-y", 1, [noted(1)])
        )
        other = asyncio.create_task(
            store.append(StreamAppend("acct-y", 1, []), StreamAppend("acct-x", 1, [noted(2)]))
        )
        await asyncio.sleep(0.3)
        # Waits on the first one's lock rather than reading its stale read set.
        assert not other.done()
        await tx.commit()
        with pytest.raises(ConcurrencyError) as raised:
            await asyncio.wait_for(other, 30)
        assert raised.value.stream_id == "acct-y"
    finally:
        await conn.close()
    assert await store.stream_version("acct-x") == 1
    assert await store.stream_version("acct-y") == 2


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


async def test_read_all_is_an_index_range_scan_without_a_sort(postgres_url: str) -> None:
    backend = await open_postgres_backend(postgres_url)
    await backend.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "INSERT INTO events (event_id, stream_id, version, event_type, schema_version,"
            " data, metadata, occurred_at)"
            " SELECT gen_random_uuid(), 'acct-' || i, 1, 'T', 1, '{}', '{}', now()"
            " FROM generate_series(1, 20000) AS i"
        )
        await conn.execute("ANALYZE events")
        middle = await conn.fetchrow(
            "SELECT transaction_id::text AS tx, position FROM events ORDER BY position"
            " OFFSET 5000 LIMIT 1"
        )
        assert middle is not None
        for plan_cache_mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
            explained = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {_READ_ALL}", middle["tx"], middle["position"], 500
            )
            nodes = _plan_nodes(json.loads(explained)[0]["Plan"])
            kinds = {node["Node Type"] for node in nodes}
            assert "Sort" not in kinds, kinds
            assert "Seq Scan" not in kinds, kinds
            assert any(node.get("Index Name") == "events_log_order" for node in nodes), nodes
    finally:
        await conn.close()


async def test_an_empty_page_waits_for_own_appends_behind_a_foreign_transaction(
    backend: Backend, postgres_url: str
) -> None:
    store = pg_store(backend)
    foreign = await asyncpg.connect(postgres_url)
    try:
        tx = foreign.transaction()
        await tx.start()
        await foreign.fetchval("SELECT pg_current_xact_id()")  # holds the fence from now on
        appended = await store.append(StreamAppend("acct-own", NO_STREAM, [noted()]))
        reading = asyncio.create_task(store.read_all(after=LOG_START, limit=10))
        await asyncio.sleep(0.2)
        await tx.commit()
        page = await asyncio.wait_for(reading, 30)
    finally:
        await foreign.close()
    assert [r.position for r in page] == [appended.position]


async def test_appends_wake_another_process_listener(backend: Backend, postgres_url: str) -> None:
    other = await open_postgres_backend(postgres_url, migrate=False)
    try:
        head = await other.store.head()
        waiting = asyncio.create_task(other.store.wait_for_events(head, 60.0))
        await asyncio.sleep(0.2)  # the waiter is parked on its listener, not polling
        await pg_store(backend).append(StreamAppend("acct-wake", NO_STREAM, [noted()]))
        assert await asyncio.wait_for(waiting, 10.0)
    finally:
        await other.close()
