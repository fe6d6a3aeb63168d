"""One PostgreSQL database shared by the event store and the read models (asyncpg).

A pool serves every query; a separate connection listens for commit announcements, sends
this process's own announcements, and reconnects in the background when it drops. Pool
connections are not reset with a query on release: cqrskit never leaves session state on them
(``SET LOCAL`` and transaction-scoped advisory locks only, ``LISTEN`` on its own connection),
and asyncpg still rolls back a transaction left open before the connection returns.

Every driver or socket error is translated into :mod:`cqrskit.errors` here, so nothing above
this module sees an ``asyncpg`` exception. A dead or unreachable database fails in bounded
time: connecting gives up after ``connect_timeout`` seconds, and a query or a wait for a
pooled connection after ``command_timeout`` seconds (``CQRSKIT_DATABASE_CONNECT_TIMEOUT``,
``CQRSKIT_DATABASE_COMMAND_TIMEOUT``); the pool replaces broken connections on the next
acquire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import asyncpg

from cqrskit.errors import IntegrityError, OperationalError, PersistenceError

__all__ = [
    "ANNOUNCE",
    "CHANNEL",
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "Listener",
    "PostgresDatabase",
    "translate",
    "translating",
]

CHANNEL = "cqrskit_events"
"""The ``LISTEN``/``NOTIFY`` channel on which appends are announced."""
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 30.0

# Holds concurrent migrations (several processes starting at once) behind one another.
_MIGRATION_LOCK = 0x63717273_6B6974
# SQLSTATE classes where retrying later may work: connection, resources, operator
# intervention (shutdown, cancel), rollback (serialization, deadlock), lock, system.
_OPERATIONAL_CLASSES = frozenset({"08", "53", "57", "40", "55", "58"})
_log = logging.getLogger("cqrskit.postgres")
ANNOUNCE = f"BEGIN; SET LOCAL synchronous_commit = off; NOTIFY {CHANNEL}; COMMIT"
"""Sent after appends commit, never inside one (PostgreSQL serializes notifying commits,
WAL flush included). Only a hint, so it does not wait for its own flush."""
# The listening connection is ours alone, so it keeps ``synchronous_commit = off`` for the
# session and announces with one statement: a quarter of ANNOUNCE's statements for the
# server to run after every append of a sequential writer.
_SESSION_ASYNC_COMMIT = "SET synchronous_commit = off"
_NOTIFY = f"NOTIFY {CHANNEL}"

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # includes ConnectionError and TimeoutError (asyncpg's command timeout)
)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing to undo (asyncpg has already rolled back an open transaction).

    The default reset (``RESET ALL; UNLISTEN *; pg_advisory_unlock_all(); ...``) costs one
    round trip per release, i.e. one or two per command.
    """


def translate(exc: BaseException) -> PersistenceError:
    """Map an ``asyncpg`` or socket error onto the framework's error tree."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith("23"):
            return IntegrityError(f"a storage constraint was violated ({state})")
        if state[:2] in _OPERATIONAL_CLASSES:
            return OperationalError(f"the PostgreSQL database is unavailable ({state})")
        return PersistenceError(f"PostgreSQL error {state}: {exc}")
    if isinstance(exc, TimeoutError):
        return OperationalError("the PostgreSQL database did not answer in time")
    return OperationalError("the PostgreSQL database is unavailable")


@contextlib.contextmanager
def translating() -> Iterator[None]:
    """Translate driver errors raised in the block (framework errors pass through)."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


class PostgresDatabase:
    """An asyncpg pool with error translation; closing is idempotent."""

    dialect = "postgres"

    def __init__(
        self,
        url: str,
        pool: asyncpg.Pool,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self.url = url
        self.pool = pool
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> PostgresDatabase:
        """Create the pool; raise :class:`OperationalError` when the server is unreachable."""
        with translating():
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                max_inactive_connection_lifetime=60.0,
                reset=_keep_session,
            )
        return cls(url, pool, connect_timeout=connect_timeout, command_timeout=command_timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """Borrow a pooled connection (errors in the block are translated)."""
        if self._closed:
            raise OperationalError("database is closed")
        with translating():
            async with self.pool.acquire(timeout=self.command_timeout) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        """Borrow a connection inside a transaction that commits when the block ends."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetch(self, query: str, *params: Any) -> list[asyncpg.Record]:
        """Run a query and return its rows."""
        async with self.connection() as conn:
            return list(await conn.fetch(query, *params))

    async def fetchrow(self, query: str, *params: Any) -> asyncpg.Record | None:
        """Run a query and return its first row, or ``None``."""
        async with self.connection() as conn:
            return await conn.fetchrow(query, *params)

    async def migrate(self, statements: Sequence[str]) -> None:
        """Run idempotent DDL in one transaction, one migrating process at a time."""
        async with self.transaction() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            for statement in statements:
                await conn.execute(statement)

    async def close(self) -> None:
        """Close the pool (once); connections still borrowed are terminated after 10 s."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self.pool.close(), 10.0)
        except (TimeoutError, *_DRIVER_ERRORS):
            self.pool.terminate()


class Listener:
    """``LISTEN`` on a dedicated connection; reconnect in the background when it drops.

    ``on_notify`` runs for every notification from another session and whenever the
    connection is (re)established, since announcements sent while it was down are lost.
    ``connected`` tells callers whether they can rely on wake-ups or must poll. :meth:`notify`
    sends an announcement on the same connection (its own echo is ignored), so announcing
    never takes a pool connection.
    """

    def __init__(self, url: str, on_notify: Callable[[], None], *, connect_timeout: float) -> None:
        self.url = url
        self.on_notify = on_notify
        self.connect_timeout = connect_timeout
        self.connected = False
        self._conn: asyncpg.Connection | None = None
        self._pid = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Connect now if possible, otherwise keep trying in the background."""
        if not await self._connect():
            self._reconnect_later()

    async def _connect(self) -> bool:
        try:
            conn = await asyncpg.connect(self.url, timeout=self.connect_timeout)
            await conn.execute(_SESSION_ASYNC_COMMIT)
            await conn.add_listener(CHANNEL, self._on_message)
        except _DRIVER_ERRORS as exc:
            _log.debug("listener cannot connect: %s", translate(exc))
            return False
        if self._closed:
            await _close_quietly(conn)
            return False
        conn.add_termination_listener(self._on_terminated)
        self._pid = conn.get_server_pid()
        self._conn = conn
        self.connected = True
        self.on_notify()
        return True

    def _on_message(self, _conn: object, pid: int, *_: object) -> None:
        if pid != self._pid:  # our own announcements: local readers were woken directly
            self.on_notify()

    async def notify(self) -> bool:
        """Announce an append to every listener; return whether it was sent."""
        conn = self._conn
        if conn is None:
            return False
        try:
            await conn.execute(_NOTIFY)
        except _DRIVER_ERRORS as exc:
            _log.debug("announcement not sent: %s", translate(exc))
            return False
        return True

    def _on_terminated(self, conn: object) -> None:
        if conn is not self._conn:
            return
        self.connected = False
        self._conn = None
        if not self._closed:
            _log.warning("listening connection lost; polling until it is back")
            self.on_notify()
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closed:
            await asyncio.sleep(delay)
            if await self._connect():
                _log.info("listening connection restored")
                return
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        """Stop listening and reconnecting (idempotent)."""
        self._closed = True
        self.connected = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except (TimeoutError, *_DRIVER_ERRORS):
        conn.terminate()
