"""Leases on PostgreSQL: one owner per projection, takeover from a paused owner, fencing.

Two workers for the same projection: exactly one holds the lease at any sampled moment.
SIGSTOP the owner past its lease: the standby takes over and advances; SIGCONT the old owner:
its stale batch is refused (its lease epoch is gone), it stands by, and the read model holds
every event exactly once and equals a rebuild from scratch. In-process, a zombie's batch is
refused even when its checkpoint matches the stored one.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import zlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cqrskit.config import Settings
from cqrskit.errors import PersistenceError
from cqrskit.messages import LOG_START
from cqrskit.projections.lease import PostgresLease
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import sql
from cqrskit.service import Runtime
from tests.integration.ticks import TickProjection, append_ticks, dump, service, spawn_worker

_HOLDERS = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND classid = $1::oid AND objid = $2::oid AND objsubid = 2"
)
_KEY = (0x6371, zlib.crc32(b"ticks") & 0x7FFFFFFF)
_COUNT = sql("SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS distinct_ids FROM tick_applied")


@pytest.fixture
async def runtime(postgres_url: str) -> AsyncIterator[Runtime]:
    rt = await Runtime.open(service, Settings(database_url=postgres_url))
    try:
        yield rt
    finally:
        await rt.close()


async def applied(runtime: Runtime) -> tuple[int, int]:
    row = await runtime.backend.read_models.fetchone(_COUNT)
    assert row is not None
    return int(row["n"]), int(row["distinct_ids"])


async def test_a_zombie_batch_is_refused_even_at_the_same_checkpoint(
    runtime: Runtime, postgres_url: str
) -> None:
    await append_ticks(runtime.backend, 600)
    old = PostgresLease(postgres_url, "ticks", ttl=0.3, owner="old")
    new = PostgresLease(postgres_url, "ticks", ttl=0.3, owner="new")
    zombie = runtime.runners["ticks"]
    try:
        assert await old.try_acquire()
        zombie.fence = old.fence()
        assert not await new.try_acquire()  # the owner's heartbeat is fresh
        await asyncio.sleep(0.4)  # the owner pauses past its lease
        deadline = time.monotonic() + 10
        while not await new.try_acquire():
            assert time.monotonic() < deadline, "the standby never took over"
            await asyncio.sleep(0.05)
        assert (new.epoch or 0) > (old.epoch or 0)

        # Nobody committed since: the zombie's expected checkpoint still matches.
        assert await runtime.backend.read_models.checkpoint("ticks") == LOG_START
        with pytest.raises(PersistenceError, match="taken over"):
            await zombie.step(LOG_START, 100)
        with pytest.raises(ConnectionError):
            await old.heartbeat()
        assert await applied(runtime) == (0, 0)

        owner = ProjectionRunner(
            runtime.backend.store, runtime.backend.read_models, TickProjection()
        )
        owner.fence = new.fence()
        await owner.catch_up()
        assert await applied(runtime) == (600, 600)
    finally:
        await old.release()
        await new.release()


async def test_sigstop_owner_standby_takes_over_and_old_batch_is_refused(
    runtime: Runtime, postgres_url: str
) -> None:
    events = 30_000
    await append_ticks(runtime.backend, events)
    head = await runtime.backend.store.head()
    read_models = runtime.backend.read_models
    admin = await asyncpg.connect(postgres_url)
    workers: list[subprocess.Popen[str]] = []
    holders_seen: set[int] = set()

    async def holders() -> list[int]:
        pids = [int(r["pid"]) for r in await admin.fetch(_HOLDERS, *_KEY)]
        assert len(pids) <= 1, f"two lease holders: {pids}"
        holders_seen.update(pids)
        return pids

    async def owner() -> str | None:
        try:
            row = await admin.fetchrow("SELECT owner FROM projection_leases WHERE name = 'ticks'")
        except asyncpg.UndefinedTableError:  # no worker has started yet
            return None
        return None if row is None else str(row["owner"])

    async def until(condition: str, check: object, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            await holders()
            if await check():  # type: ignore[operator]
                return
            assert time.monotonic() < deadline, condition
            await asyncio.sleep(0.02)

    try:
        first = spawn_worker(postgres_url, "--lease-ttl", "1.0", batch_size=100)
        workers.append(first)

        async def first_owns() -> bool:
            return (await owner() or "").endswith(f":{first.pid}") and (
                await read_models.checkpoint("ticks") > LOG_START
            )

        await until("the first worker never took the lease", first_owns)
        second = spawn_worker(postgres_url, "--lease-ttl", "1.0", batch_size=100)
        workers.append(second)
        await asyncio.sleep(0.8)  # the standby is up and polling
        assert (await owner() or "").endswith(f":{first.pid}")

        first.send_signal(signal.SIGSTOP)
        stopped_at = await read_models.checkpoint("ticks")
        assert stopped_at < head, "the catch-up should still be going"

        async def second_advanced() -> bool:
            return (await owner() or "").endswith(f":{second.pid}") and (
                await read_models.checkpoint("ticks") > stopped_at
            )

        await until("the standby never took over", second_advanced)
        first.send_signal(signal.SIGCONT)

        async def caught_up() -> bool:
            return await read_models.checkpoint("ticks") >= head

        await until("the new owner did not catch up", caught_up, 60)
        await asyncio.sleep(1.0)  # the old owner wakes up, is refused and stands by
        assert first.poll() is None
        assert second.poll() is None
        assert (await owner() or "").endswith(f":{second.pid}")
        await holders()
    finally:
        errs = []
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.send_signal(signal.SIGTERM)
            errs.append(worker.communicate(timeout=30)[1])
        await admin.close()
    assert "lease of ticks lost" in errs[0], errs[0]
    assert len(holders_seen) == 2

    assert await applied(runtime) == (events, events)
    live = await dump(read_models)
    await runtime.runners["ticks"].rebuild(batch_size=5000)
    assert await dump(read_models) == live
