"""One SQLite database file shared by the event store and the read models.

SQLite has one writer at a time, so each process keeps exactly one writer connection on its own
thread: a whole transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``) runs there as one function, one
thread hop per command or per projection batch. Reads use a second connection on a second
thread; WAL lets them run beside the writer. ``synchronous=FULL`` makes every commit durable
before it is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import uuid4

from cqrskit.errors import IntegrityError, OperationalError, PersistenceError

__all__ = ["SQLiteDatabase", "sqlite_path_from_url"]

T = TypeVar("T")

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
)


def sqlite_path_from_url(url: str) -> Path:
    """Return the file path of a ``sqlite:///relative`` or ``sqlite:////absolute`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path or parts.path == "/":
        raise ValueError("expected a URL like sqlite:///data/orders.db")
    if parts.path.endswith(":memory:"):
        raise ValueError("use memory:// for an in-memory store; sqlite needs a file")
    return Path(parts.path[1:])


def _is_uri(path: Path | str) -> bool:
    return isinstance(path, str) and path[:5] == "file:"


def _connect(path: Path | str) -> sqlite3.Connection:
    uri = _is_uri(path)
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, uri=uri)
    conn.row_factory = sqlite3.Row
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    return conn


def translate(exc: sqlite3.Error) -> PersistenceError:
    """Map a ``sqlite3`` error onto the framework's error tree."""
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError("a storage constraint was violated")
    return OperationalError("the SQLite database is unavailable")


class _Worker:
    """One thread running submitted calls in order; results come back on the caller's loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, outcome)

    async def stop(self) -> None:
        self._jobs.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class SQLiteDatabase:
    """A writer thread and a reader thread over one database file."""

    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._writer_thread = _Worker("cqrskit-sqlite-w")
        self._reader_thread = _Worker("cqrskit-sqlite-r")
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path | str) -> SQLiteDatabase:
        """Open (creating the file and its directory) and set WAL and durability pragmas."""
        db = cls(path if isinstance(path, Path) or _is_uri(path) else Path(path))
        try:
            db._writer = await db._writer_thread.submit(_connect, db.path)
            db._reader = await db._reader_thread.submit(_connect, db.path)
        except sqlite3.Error as exc:
            await db.close()
            raise translate(exc) from exc
        return db

    @classmethod
    async def open_memory(cls) -> SQLiteDatabase:
        """Open a private in-memory database shared by the writer and reader connections."""
        return await cls.open(f"file:cqrskit-{uuid4().hex}?mode=memory&cache=shared")

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` inside one ``BEGIN IMMEDIATE`` transaction on the writer thread.

        The transaction commits when ``work`` returns and rolls back when it raises; the
        exception propagates (``sqlite3`` errors translated).
        """
        conn = self._writer
        if conn is None:
            raise OperationalError("database is closed")
        return await self._writer_thread.submit(_in_transaction, conn, work)

    async def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` on the reader connection's thread."""
        conn = self._reader
        if conn is None:
            raise OperationalError("database is closed")
        return await self._reader_thread.submit(_reading, conn, work)

    async def close(self) -> None:
        """Close both connections and stop their threads."""
        for conn, thread in (
            (self._writer, self._writer_thread),
            (self._reader, self._reader_thread),
        ):
            if conn is not None:
                await thread.submit(conn.close)
            await thread.stop()
        self._writer = self._reader = None


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise translate(exc) from exc
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise translate(exc) from exc
        raise
    return result


def _reading(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    try:
        return work(conn)
    except sqlite3.Error as exc:
        raise translate(exc) from exc
