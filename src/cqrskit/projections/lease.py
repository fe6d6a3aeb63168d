"""Leases: each projection is run by exactly one worker at a time, and a zombie is fenced.

On PostgreSQL a worker owns a projection while it holds a session-level advisory lock on a
dedicated connection (``pg_try_advisory_lock``). Guarantees:

1. At most one session holds a projection's lock; only its holder runs the projection.
2. Taking a lease bumps the projection's ``epoch`` in ``projection_leases``; every batch the
   owner commits first calls ``cqrskit_fence(name, epoch)`` in the same transaction, which
   share-locks the lease row and raises unless the epoch is still the owner's. A paused old
   owner (SIGSTOP, a long GC pause, a partitioned host) whose lease was taken over can
   therefore never commit a stale batch, even if its checkpoint happens to match; and a
   takeover waits for a batch that already passed the fence, then reads its checkpoint. A
   batch paused inside its transaction is ended by PostgreSQL once it idles ``ttl`` seconds
   (``idle_in_transaction_session_timeout``, set for that transaction by the fence), so a
   stopped owner cannot hold the checkpoint row, or the log's xid fence, for ever.
3. The owner heartbeats (``projection_lease_beats``) every ``ttl / 3`` seconds. A standby
   polls: when the lock is busy and the holder's heartbeat is older than ``ttl``, it terminates the
   holder's session (``pg_terminate_backend``, allowed for the same role), which releases the
   lock; a dead process's session ends with its socket. The standby then takes the lock.
4. An owner that cannot heartbeat (its session was terminated, the database is gone) stops
   running the projection and becomes a standby again.

SQLite has one writer on one machine: run one worker there (the checkpoint's conditional
commit still keeps a second one from applying anything twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import zlib
from typing import Any

import asyncpg

from cqrskit.projections.rebuild import follow
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql

__all__ = ["PostgresLease", "run_leased"]

_log = logging.getLogger("cqrskit.projections")

_NAMESPACE = 0x6371  # the first key of every lease lock; the second is the name's CRC32
_SETUP_LOCK = 0x63717365
_DDL = (
    "CREATE TABLE IF NOT EXISTS projection_leases (name text PRIMARY KEY,"
    " epoch bigint NOT NULL DEFAULT 0, owner text)",
    # Heartbeats live in their own rows: they must never wait for the fence's share lock
    # on the lease row (busy batches would starve them and the lease would look expired).
    "CREATE TABLE IF NOT EXISTS projection_lease_beats (name text PRIMARY KEY,"
    " backend_pid integer NOT NULL, heartbeat_at timestamptz NOT NULL)",
    # A batch paused inside its transaction must not hold the checkpoint row (and the log's
    # xid fence) for ever: PostgreSQL ends it once it idles longer than the lease's ttl.
    "CREATE OR REPLACE FUNCTION cqrskit_fence(lease text, expected bigint, ttl_ms bigint)"
    " RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
    " PERFORM set_config('idle_in_transaction_session_timeout', ttl_ms::text, true);"
    " PERFORM 1 FROM projection_leases WHERE name = lease AND epoch = expected FOR SHARE;"
    " IF NOT FOUND THEN RAISE EXCEPTION 'the lease of % was taken over (epoch % is stale)',"
    " lease, expected USING ERRCODE = 'CQ001'; END IF; END $$",
)
_TAKE = (
    "INSERT INTO projection_leases (name, epoch, owner) VALUES ($1, 1, $2)"
    " ON CONFLICT (name) DO UPDATE SET epoch = projection_leases.epoch + 1,"
    " owner = excluded.owner RETURNING epoch"
)
_FIRST_BEAT = (
    "INSERT INTO projection_lease_beats (name, backend_pid, heartbeat_at)"
    " VALUES ($1, pg_backend_pid(), now()) ON CONFLICT (name) DO UPDATE"
    " SET backend_pid = excluded.backend_pid, heartbeat_at = excluded.heartbeat_at"
)
_BEAT = (
    "UPDATE projection_lease_beats SET heartbeat_at = now()"
    " WHERE name = $1 AND backend_pid = pg_backend_pid()"
)
_BREAK = (
    "SELECT l.pid, pg_terminate_backend(l.pid) FROM pg_locks l JOIN projection_lease_beats b"
    " ON b.name = $3 WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid"
    " AND l.objid = $2::oid AND l.objsubid = 2 AND l.pid <> pg_backend_pid()"
    " AND b.heartbeat_at < now() - make_interval(secs => $4)"
)
FENCE = sql("SELECT cqrskit_fence($1, $2, $3)", sqlite="SELECT 1")


def _key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def default_owner() -> str:
    """Name this process for the lease table: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresLease:
    """One projection's lease, held on its own connection."""

    def __init__(self, url: str, name: str, *, ttl: float = 10.0, owner: str | None = None):
        self.url = url
        self.name = name
        self.ttl = ttl
        self.owner = owner or default_owner()
        self.epoch: int | None = None
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=self.ttl)
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock($1)", _SETUP_LOCK)
                for statement in _DDL:
                    await self._conn.execute(statement)
        return self._conn

    async def try_acquire(self) -> bool:
        """Take the lease if it is free (breaking an expired holder's session); say if held."""
        conn = await self._connection()
        key = _key(self.name)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", _NAMESPACE, key):
            for row in await conn.fetch(_BREAK, _NAMESPACE, key, self.name, self.ttl):
                _log.warning(
                    "lease of %s expired: ended its holder's session %s", self.name, row[0]
                )
            return False
        await conn.execute(_FIRST_BEAT, self.name)
        self.epoch = int(await conn.fetchval(_TAKE, self.name, self.owner))
        _log.info("lease of %s taken by %s (epoch %d)", self.name, self.owner, self.epoch)
        return True

    def fence(self) -> Statement:
        """The statement that fails a batch unless this lease's epoch is still current."""
        if self.epoch is None:
            raise RuntimeError(f"the lease of {self.name} is not held")
        return FENCE(self.name, self.epoch, max(1, int(self.ttl * 1000)))

    async def heartbeat(self) -> None:
        """Prove the lease is alive; raise when it was lost."""
        conn = self._conn
        if conn is None or conn.is_closed():
            raise ConnectionError(f"the lease of {self.name} has no session")
        status = await asyncio.wait_for(conn.execute(_BEAT, self.name), self.ttl)
        if status != "UPDATE 1":
            raise ConnectionError(f"the lease of {self.name} was taken over")

    async def release(self) -> None:
        """Give the lease up (closing the session releases the lock in any case)."""
        self.epoch = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
            if not conn.is_closed():
                conn.terminate()


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_leased(
    runner: ProjectionRunner, lease: PostgresLease, stop: asyncio.Event, *, poll: float = 1.0
) -> None:
    """Stand by for ``runner``'s lease; while it is held, run the projection (fenced)."""
    while not stop.is_set():
        try:
            held = await lease.try_acquire()
        except Exception as exc:
            _log.warning("lease of %s: %s", lease.name, exc)
            await lease.release()
            held = False
        if not held:
            await _sleep_or(stop, poll)
            continue
        mine = asyncio.Event()
        runner.fence = lease.fence()
        task = asyncio.create_task(follow(runner, mine))
        try:
            while not stop.is_set() and not task.done():
                await _sleep_or(stop, lease.ttl / 3)
                try:
                    await lease.heartbeat()
                except Exception as exc:
                    _log.warning("lease of %s lost: %s", lease.name, repr(exc))
                    break
        finally:
            mine.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            runner.fence = None
            await lease.release()
