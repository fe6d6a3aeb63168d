"""PostgreSQL event store: concurrent writers, a gap-safe log read below the xid fence.

Events carry the writing transaction's ``xid8``; the log is ordered and checkpointed by
``(transaction_id, position)`` and read only below ``pg_snapshot_xmin(pg_current_snapshot())``,
where no transaction can still be in flight (docs/ordering.md explains why this never skips
an event). An append is one statement: it reads each stream's version, checks the expected
versions and inserts every event before the transaction has written anything, so a racing
appender waits on the unique ``(stream_id, version)`` index and then fails.

Appends are announced after commit with ``NOTIFY`` (never inside the append: PostgreSQL
serializes notifying commits); readers wake on the listener and re-poll while committed
events are still behind the fence. ``read_all``, ``head``, ``count_after`` and ``backlog``
wait briefly until this store's own appends are readable, so a process reads its own writes.

``recorded_at`` is the server's ``now()``, so ages are measured by the server's clock:
``backlog`` computes them in SQL, and ``now`` adds the server's offset from this process's
clock, measured once a minute (see :meth:`PostgresEventStore.now`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from cqrskit._postgres import (
    ANNOUNCE,
    COMMAND_TIMEOUT,
    CONNECT_TIMEOUT,
    Listener,
    PostgresDatabase,
    translating,
)
from cqrskit.backend import Backend
from cqrskit.errors import ConcurrencyError, OperationalError, PersistenceError
from cqrskit.idempotency import CommandRecord, DuplicateCommand, StoredCommand
from cqrskit.messages import (
    LOG_START,
    NIL_UUID,
    DomainEvent,
    LogPosition,
    RecordedEvent,
    utc_now,
)
from cqrskit.store.mapper import SerializedEvent, deserialize, serialize
from cqrskit.store.protocol import ANY_VERSION, AppendResult, Backlog, StreamAppend

__all__ = ["SCHEMA", "PostgresEventStore", "open_postgres_backend"]

# The append runs in one call of this function. It reads every stream's version in its first
# reading statement, before the insert assigns the transaction its xid (see docs/ordering.md),
# and reports a stale expected version as a row instead of raising, so nothing is written and
# a caller's own transaction stays usable. plpgsql keeps one generic plan per session, so an
# append is not re-planned on every call. Arguments: per StreamAppend its stream id, expected
# version and ``base`` (events of the same stream earlier in the call); per event the
# 1-based index of its StreamAppend, its columns and its 1-based offset in that StreamAppend.
#
# A StreamAppend without events only checks its stream's version (a command's read set).
# Such an append first takes transaction-scoped advisory locks, in key order: shared on the
# streams it only reads, exclusive on those it writes. Two appends that each read what the
# other writes then run one after the other, and the version read (its own statement, hence
# its own snapshot) happens after the lock, so a stale read set is caught at commit time,
# not only at read time. Appends without a read set take no lock: they cannot be part of
# such a cycle (docs/ordering.md, "Read sets").
# The locks' first key, 1668379251, is 'cqrs' in ASCII; the two-key advisory lock space is
# separate from the one-key space (where migrations lock).
_APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION cqrskit_append(
    p_streams text[], p_expected int[], p_base int[],
    p_stream int[], p_ids uuid[], p_types text[], p_schemas int[], p_data text[],
    p_metadata text[], p_occurred timestamptz[], p_offsets int[],
    p_scope text, p_key text, p_hash text, p_type text, p_command text)
RETURNS TABLE (out_event_id uuid, out_position bigint, out_transaction_id bigint,
               out_version int, out_recorded_at timestamptz, out_stream_id text,
               out_expected int)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    cur int[];
BEGIN
    IF EXISTS (SELECT FROM generate_subscripts(p_streams, 1) AS g(i)
               WHERE g.i <> ALL (p_stream)) THEN
        PERFORM CASE WHEN l.w THEN pg_advisory_xact_lock(1668379251, l.h)
                     ELSE pg_advisory_xact_lock_shared(1668379251, l.h) END
        FROM (SELECT hashtext(t.sid) AS h, bool_or(t.i = ANY (p_stream)) AS w
              FROM unnest(p_streams) WITH ORDINALITY AS t(sid, i)
              GROUP BY 1 ORDER BY 1) AS l;
    END IF;
    SELECT array_agg(coalesce((SELECT max(e.version) FROM events e WHERE e.stream_id = t.sid), 0)
                     + p_base[t.i] ORDER BY t.i)
      INTO cur FROM unnest(p_streams) WITH ORDINALITY AS t(sid, i);
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        IF p_expected[i] <> -1 AND p_expected[i] <> cur[i] THEN
            RETURN QUERY SELECT NULL::uuid, NULL::bigint, NULL::bigint, cur[i],
                                NULL::timestamptz, p_streams[i], p_expected[i];
            RETURN;
        END IF;
    END LOOP;
    RETURN QUERY
    WITH ins AS (
        INSERT INTO events AS e (event_id, stream_id, version, event_type, schema_version, data,
                                 metadata, occurred_at)
        SELECT v.id, p_streams[v.si], cur[v.si] + v.k, v.t, v.sv, v.d::jsonb, v.m::jsonb, v.o
        FROM unnest(p_stream, p_ids, p_types, p_schemas, p_data, p_metadata, p_occurred,
                    p_offsets) WITH ORDINALITY AS v(si, id, t, sv, d, m, o, k, n)
        ORDER BY v.n
        RETURNING e.event_id, e.position, e.transaction_id, e.version, e.recorded_at
    ), rec AS (
        INSERT INTO commands (scope, key, request_hash, command_type, command, first_position,
                              last_position)
        SELECT p_scope, p_key, p_hash, p_type, p_command, min(ins.position), max(ins.position)
        FROM ins HAVING p_key IS NOT NULL
    )
    SELECT ins.event_id, ins.position, ins.transaction_id::text::bigint, ins.version,
           ins.recorded_at, NULL::text, NULL::int
    FROM ins;
END
$fn$
"""
SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS events (
        position bigint GENERATED ALWAYS AS IDENTITY,
        transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
        event_id uuid NOT NULL,
        stream_id text NOT NULL,
        version integer NOT NULL CHECK (version >= 1),
        event_type text NOT NULL,
        schema_version integer NOT NULL,
        data jsonb NOT NULL,
        metadata jsonb NOT NULL,
        occurred_at timestamptz NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT events_pkey PRIMARY KEY (position),
        CONSTRAINT events_event_id_key UNIQUE (event_id),
        CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_log_order ON events (transaction_id, position)",
    """
    CREATE TABLE IF NOT EXISTS commands (
        scope text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        command_type text NOT NULL,
        command text NOT NULL,
        transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
        first_position bigint,
        last_position bigint,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT commands_pkey PRIMARY KEY (scope, key)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name text PRIMARY KEY,
        transaction_id bigint NOT NULL DEFAULT 0,
        position bigint NOT NULL DEFAULT 0,
        updated_at timestamptz
    )
    """,
    _APPEND_FUNCTION,
)

_FENCE = "pg_snapshot_xmin(pg_current_snapshot())"
# Strictly after a checkpoint, in (transaction_id, position) order. The leading-column bound
# repeats what the row comparison implies: it lets the planner estimate the range from the
# column's statistics, so even a checkpoint far behind is read by an index range scan on
# events_log_order rather than a sequential scan (docs/ordering.md, "PostgreSQL tuning").
_AFTER = (
    "e.transaction_id >= $1::text::xid8"
    " AND (e.transaction_id, e.position) > ($1::text::xid8, $2::bigint)"
)

_APPEND = (
    "SELECT out_event_id AS event_id, out_position AS position,"
    " out_transaction_id AS transaction_id, out_version AS version,"
    " out_recorded_at AS recorded_at, out_stream_id AS stream_id, out_expected AS expected"
    " FROM cqrskit_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,"
    " $12, $13, $14, $15, $16)"
)
# The common append, one event to one stream, as one plain statement: its snapshot (and so
# its version read) is taken before the insert assigns the xid, like the function's, with
# scalar parameters the server plans once per connection. About twice the function's rate at
# 32 connections. A stale expected version comes back as a row without a position.
_APPEND_ONE = """
WITH c AS (SELECT coalesce(max(version), 0) AS v FROM events WHERE stream_id = $1),
ins AS (
    INSERT INTO events AS e (event_id, stream_id, version, event_type, schema_version, data,
                             metadata, occurred_at)
    SELECT $3, $1, c.v + 1, $4, $5, $6::jsonb, $7::jsonb, $8 FROM c
    WHERE $2::int = -1 OR c.v = $2::int
    RETURNING e.event_id, e.position, e.transaction_id, e.version, e.recorded_at
)
SELECT ins.event_id, ins.position, ins.transaction_id::text::bigint AS transaction_id,
       ins.version, ins.recorded_at, NULL::text AS stream_id, NULL::int AS expected FROM ins
UNION ALL
SELECT NULL, NULL, NULL, c.v, NULL, $1, $2::int FROM c WHERE NOT ($2::int = -1 OR c.v = $2::int)
"""
# The same with the command's record, inserted in the same statement once the event is in.
_APPEND_ONE_RECORDED = _APPEND_ONE.replace(
    "\nSELECT ins.event_id",
    """, rec AS (
    INSERT INTO commands (scope, key, request_hash, command_type, command, first_position,
                          last_position)
    SELECT $9, $10, $11, $12, $13, ins.position, ins.position FROM ins
)
SELECT ins.event_id""",
    1,
)
_RECORD_ONLY = (
    "INSERT INTO commands (scope, key, request_hash, command_type, command)"
    " VALUES ($1, $2, $3, $4, $5)"
)
_FIND_COMMAND = (
    "SELECT c.request_hash, c.command_type, c.command, r.* FROM commands c"
    " LEFT JOIN LATERAL ("
    "SELECT e.transaction_id::text::bigint AS transaction_id, e.position, e.recorded_at,"
    " e.event_id, e.stream_id, e.version, e.event_type, e.schema_version,"
    " e.data::text AS data, e.metadata::text AS metadata, e.occurred_at FROM events e"
    " WHERE e.transaction_id = c.transaction_id"
    " AND e.position BETWEEN c.first_position AND c.last_position"
    ") r ON true WHERE c.scope = $1 AND c.key = $2 ORDER BY r.position"
)
_EVENT_COLUMNS = (
    "e.event_id, e.stream_id, e.version, e.event_type, e.schema_version,"
    " e.data::text AS data, e.metadata::text AS metadata, e.occurred_at"
)
_READ_STREAM = (
    f"SELECT {_EVENT_COLUMNS} FROM events e"  # noqa: S608 (constant columns)
    " WHERE e.stream_id = $1 AND e.version > $2 ORDER BY e.version"
)
_READ_STREAM_PAGE = (
    "SELECT e.transaction_id::text::bigint AS transaction_id, e.position, e.recorded_at,"  # noqa: S608 (constant columns)
    f" {_EVENT_COLUMNS} FROM events e"
    " WHERE e.stream_id = $1 AND e.version > $2 ORDER BY e.version LIMIT $3"
)
_STREAM_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1"
# The log queries also return the fence of their own snapshot (``fence``, one row even when
# nothing else matches), so waiting for this store's own appends costs no extra round trip.
# ORDER BY names the table's columns (``e.``): the bare names would sort by the bigint output
# aliases, which no index provides, and sort the whole tail of the log on every page.
_FENCED = "(SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) f"
_READ_ALL = (
    "SELECT f.xmin::text::bigint AS fence, r.* FROM"  # noqa: S608 (constant text)
    f" {_FENCED} LEFT JOIN LATERAL ("
    "SELECT e.transaction_id::text::bigint AS transaction_id, e.position, e.recorded_at,"
    f" {_EVENT_COLUMNS} FROM events e WHERE {_AFTER} AND e.transaction_id < f.xmin"
    " ORDER BY e.transaction_id, e.position LIMIT $3) r ON true"
)
_HEAD = (
    "SELECT f.xmin::text::bigint AS fence, h.* FROM"  # noqa: S608 (constant text)
    f" {_FENCED} LEFT JOIN LATERAL ("
    "SELECT e.transaction_id::text::bigint AS transaction_id, e.position FROM events e"
    " WHERE e.transaction_id < f.xmin ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1"
    ") h ON true"
)
_COUNT_AFTER = (
    "SELECT f.xmin::text::bigint AS fence,"  # noqa: S608 (constant text)
    f" (SELECT count(*) FROM events e WHERE {_AFTER} AND e.transaction_id < f.xmin) AS n"
    f" FROM {_FENCED}"
)
# Seconds since the oldest matching event was recorded, by the server's clock (0 for none).
_OLDEST_AGE = "greatest(coalesce(extract(epoch FROM now() - min(e.recorded_at))::float8, 0), 0)"
_BACKLOG = (
    "SELECT f.xmin::text::bigint AS fence, b.n, b.age FROM"  # noqa: S608 (constant text)
    f" {_FENCED} CROSS JOIN LATERAL (SELECT count(*) AS n, {_OLDEST_AGE} AS age"
    f" FROM events e WHERE {_AFTER} AND e.transaction_id < f.xmin) b"
)
# Readable: something after ``after`` lies below the fence. Committed: something after it is
# visible at all, so if it is not readable yet an older transaction holds the fence back.
_PROBE = (
    f"SELECT EXISTS (SELECT 1 FROM events e WHERE {_AFTER} AND e.transaction_id < {_FENCE}),"  # noqa: S608 (constant text)
    f" EXISTS (SELECT 1 FROM events e WHERE {_AFTER})"
)

_OWN_WRITES_WAIT = 2.0
_REPOLL_MIN = 0.005
_REPOLL_MAX = 0.02
_FALLBACK_POLL = 0.2
_CLOCK_EVERY = 60.0
_CLOCK_RETRY = 5.0
_CLOCK_SAMPLES = 3
_ANY_VERSION_RETRIES = 10
_log = logging.getLogger("cqrskit.postgres")


def _event(row: asyncpg.Record) -> DomainEvent:
    return deserialize(
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=row["data"],
        metadata=row["metadata"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        version=row["version"],
        occurred_at=row["occurred_at"],
    )


def _record(row: asyncpg.Record) -> RecordedEvent:
    position = LogPosition(row["transaction_id"], row["position"])
    return RecordedEvent(position, _event(row), row["recorded_at"])


_HELD_BACK = (
    "SELECT count(*) AS n, min(e.recorded_at) AS since,"  # noqa: S608 (constant text)
    f" {_OLDEST_AGE} AS age FROM events e WHERE e.transaction_id >= {_FENCE}"
)
_OLDEST_TRANSACTION = (
    "SELECT pid, datname, application_name, backend_xid::text AS xid, state, xact_start,"
    " extract(epoch FROM now() - xact_start)::float8 AS xact_age, query_start,"
    " extract(epoch FROM now() - query_start)::float8 AS query_age"
    " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
    " AND xact_start < now() - make_interval(secs => $1)"
    " ORDER BY age(backend_xid) DESC LIMIT 1"
)


class PostgresEventStore:
    """Event store on a :class:`~cqrskit._postgres.PostgresDatabase`."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._wakeup = asyncio.Event()
        self._listener = Listener(db.url, self._wake, connect_timeout=db.connect_timeout)
        self._announce = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._closed = False
        self._own_tx = 0  # greatest xid of this store's own committed appends
        self._settled_tx = 0  # greatest of those known to lie below the fence
        self._clock_offset = timedelta(0)  # the server's clock minus ours
        self._clock_due = 0.0  # monotonic time of the next offset measurement
        self._clock_lock = asyncio.Lock()

    async def start(self) -> None:
        """Start listening for appends made by other connections and processes."""
        await self._listener.start()

    async def migrate(self) -> None:
        """Create the events and checkpoint tables if they are missing (idempotent)."""
        await self.db.migrate(SCHEMA)

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        if not streams:
            if command is not None:
                async with self.db.connection() as conn:
                    try:
                        await conn.execute(_RECORD_ONLY, *command)
                    except asyncpg.UniqueViolationError:
                        raise DuplicateCommand(command.scope, command.key) from None
            return AppendResult([])
        try:
            for attempt in range(_ANY_VERSION_RETRIES):
                try:
                    async with self.db.connection() as conn:
                        result = await self.append_on(conn, *streams, command=command)
                    break
                except _VersionRace:
                    # Nobody asked for a version check: number the events again.
                    retry = all(s.expected_version == ANY_VERSION for s in streams)
                    if not retry or attempt == _ANY_VERSION_RETRIES - 1:
                        raise
        finally:
            # A transaction of ours ended (committed or not), so the fence may have moved:
            # local readers waiting behind it look again.
            self._wake()
        if result.events:
            self._own_tx = max(self._own_tx, result.position.transaction_id)
            self._announce_later()  # local readers were woken just above
        return result

    async def append_on(
        self, conn: Any, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        """Append on a connection the caller owns, inside the caller's transaction if any.

        It must be the transaction's first write (versions are read before the xid exists).
        The caller commits, then calls :meth:`announce` to wake readers at once.
        """
        if len(streams) == 1 and len(streams[0].events) == 1:
            return await self._append_one(conn, streams[0], command)
        arrays = _Arrays.build(streams)
        with translating():
            try:
                record = (None,) * 5 if command is None else tuple(command)
                rows = await conn.fetch(_APPEND, *arrays.params(), *record)
            except asyncpg.UniqueViolationError as exc:
                if command is not None and exc.constraint_name == "commands_pkey":
                    raise DuplicateCommand(command.scope, command.key) from None
                raise _conflict(exc, streams) from None
            except asyncpg.DeadlockDetectedError:
                # Only with a caller's own earlier writes in the transaction: appends alone
                # take their locks in one order. Nothing of this append was stored.
                raise ConcurrencyError(streams[0].stream_id, streams[0].expected_version) from None
        placed: dict[UUID, asyncpg.Record] = {}
        for row in rows:
            if row["position"] is None:
                raise ConcurrencyError(row["stream_id"], row["expected"], row["version"])
            placed[row["event_id"]] = row
        recorded = []
        for stream_id, event in arrays.events:
            row = placed[event.event_id]
            position = LogPosition(row["transaction_id"], row["position"])
            recorded.append(
                RecordedEvent(position, _placed(event, stream_id, row), row["recorded_at"])
            )
        recorded.sort(key=lambda r: r.position)
        return AppendResult(recorded)

    async def _append_one(
        self, conn: Any, stream: StreamAppend, command: CommandRecord | None
    ) -> AppendResult:
        # The common append, one event to one stream: scalar parameters straight from the
        # event, no column arrays to build (bench scenarios 1-3).
        stream_id, expected, (event,) = stream
        event, s = _with_id(event)
        params = (
            stream_id,
            expected,
            s.event_id,
            s.event_type,
            s.schema_version,
            s.data,
            s.metadata,
            s.occurred_at,
        )
        with translating():
            try:
                if command is None:
                    rows = await conn.fetch(_APPEND_ONE, *params)
                else:
                    rows = await conn.fetch(_APPEND_ONE_RECORDED, *params, *command)
            except asyncpg.UniqueViolationError as exc:
                if command is not None and exc.constraint_name == "commands_pkey":
                    raise DuplicateCommand(command.scope, command.key) from None
                raise _conflict(exc, (stream,)) from None
            except asyncpg.DeadlockDetectedError:
                raise ConcurrencyError(stream_id, expected) from None
        row = rows[0]
        if row["position"] is None:
            raise ConcurrencyError(row["stream_id"], row["expected"], row["version"])
        position = LogPosition(row["transaction_id"], row["position"])
        return AppendResult(
            [RecordedEvent(position, _placed(event, stream_id, row), row["recorded_at"])]
        )

    def announce(self) -> None:
        """Wake local readers now and other processes' listeners shortly (coalesced)."""
        self._wake()
        self._announce_later()

    def _announce_later(self) -> None:
        self._announce.set()
        if not self._closed and (self._announcer is None or self._announcer.done()):
            self._announcer = asyncio.get_running_loop().create_task(self._send_announcements())

    async def _send_announcements(self) -> None:
        # One NOTIFY in flight at a time, on the listening connection; appends made meanwhile
        # are covered by the next one. Falls back to a pool connection while it is down.
        while self._announce.is_set() and not self._closed:
            self._announce.clear()
            if await self._listener.notify():
                continue
            try:
                async with self.db.connection() as conn:
                    await conn.execute(ANNOUNCE)
            except OperationalError as exc:
                _log.debug("announcement not sent (readers will poll): %s", exc)
                return

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        rows = await self.db.fetch(_READ_STREAM, stream_id, after_version)
        return [_event(row) for row in rows]

    async def read_stream_records(
        self, stream_id: str, *, after_version: int = 0, limit: int
    ) -> list[RecordedEvent]:
        rows = await self.db.fetch(_READ_STREAM_PAGE, stream_id, after_version, limit)
        return [_record(row) for row in rows]

    async def find_command(self, scope: str, key: str) -> StoredCommand | None:
        rows = await self.db.fetch(_FIND_COMMAND, scope, key)
        if not rows:
            return None
        first = rows[0]
        record = CommandRecord(scope, key, first[0], first[1], first[2])
        return StoredCommand(record, [_record(row) for row in rows if row["position"] is not None])

    async def stream_version(self, stream_id: str) -> int:
        row = await self.db.fetchrow(_STREAM_VERSION, stream_id)
        return 0 if row is None else int(row[0])

    async def _fenced(
        self, query: str, *params: Any, done: Callable[[list[asyncpg.Record]], bool]
    ) -> list[asyncpg.Record]:
        """Run a log query; while this store's own earlier appends are behind its fence, rerun.

        Read-your-writes: a transaction older than our last append and still in flight
        (anywhere in the cluster) holds the fence back for a moment. Only appends that
        returned before this call are waited for (at most ``_OWN_WRITES_WAIT``), and the
        query reports its own fence, so a call with nothing to wait for costs one round trip.
        """
        target = self._own_tx
        rows = await self.db.fetch(query, *params)
        if target <= self._settled_tx or done(rows):
            return rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _OWN_WRITES_WAIT
        delay = _REPOLL_MIN
        while True:
            if rows and rows[0]["fence"] > target:
                self._settled_tx = max(self._settled_tx, target)
                return rows
            remaining = deadline - loop.time()
            if remaining <= 0:
                return rows
            await self._fence_may_move(self._wakeup, min(delay, remaining))
            delay = min(delay * 2, _REPOLL_MAX)
            rows = await self.db.fetch(query, *params)

    async def _fence_may_move(self, wakeup: asyncio.Event, timeout: float) -> None:
        # The fence moves when an older transaction ends. Ours end with a wake-up; others'
        # (other processes, rollbacks, read-model batches) are caught by the timer.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout)

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        # Only an empty page waits for our own appends, and only until something is readable:
        # a reader that stops at its first empty page (catch-up) still sees every append that
        # returned before it, while a page that has events is never held back for later ones.
        params = (str(after.transaction_id), after.position, limit)
        rows = await self._fenced(_READ_ALL, *params, done=_has_events)
        return [_record(row) for row in rows if row["position"] is not None]

    async def head(self) -> LogPosition:
        rows = await self._fenced(_HEAD, done=_never)
        row = rows[0]
        return LOG_START if row["position"] is None else LogPosition(row[1], row[2])

    async def count_after(self, after: LogPosition) -> int:
        params = (str(after.transaction_id), after.position)
        rows = await self._fenced(_COUNT_AFTER, *params, done=_never)
        return int(rows[0]["n"])

    async def backlog(self, after: LogPosition) -> Backlog:
        params = (str(after.transaction_id), after.position)
        rows = await self._fenced(_BACKLOG, *params, done=_never)
        return Backlog(int(rows[0]["n"]), float(rows[0]["age"]))

    async def now(self) -> datetime:
        """The server's time: ours plus its offset, measured at most once a minute.

        recorded_at is the server's ``now()``; a process whose clock is minutes off would
        otherwise see events as minutes old (or from the future). Offsets between clocks
        drift by milliseconds per hour, so a cached one costs no round trip per call. The
        offset is the best of a few ``clock_timestamp()`` round trips (error at most half
        the round trip); while the server is unreachable the last one is kept.
        """
        if time.monotonic() >= self._clock_due:
            async with self._clock_lock:  # concurrent callers wait for one measurement
                if time.monotonic() >= self._clock_due:
                    await self._measure_clock()
        return utc_now() + self._clock_offset

    async def _measure_clock(self) -> None:
        best: tuple[float, timedelta] | None = None
        try:
            async with self.db.connection() as conn:
                for _ in range(_CLOCK_SAMPLES):
                    sent, started = utc_now(), time.monotonic()
                    server: datetime = await conn.fetchval("SELECT clock_timestamp()")
                    trip = time.monotonic() - started
                    offset = server - (sent + timedelta(seconds=trip / 2))
                    if best is None or trip < best[0]:
                        best = (trip, offset)
        except PersistenceError:
            self._clock_due = time.monotonic() + _CLOCK_RETRY
            return
        if best is not None:
            self._clock_offset = best[1]
        self._clock_due = time.monotonic() + _CLOCK_EVERY

    async def _probe(self, after: LogPosition) -> tuple[bool, bool]:
        row = await self.db.fetchrow(_PROBE, str(after.transaction_id), after.position)
        return (False, False) if row is None else (bool(row[0]), bool(row[1]))

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        repoll = _REPOLL_MIN
        while True:
            wakeup = self._wakeup  # taken before the probe: a wake-up during it is not lost
            readable, committed = await self._probe(after)
            if readable:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if committed:
                # Committed after ``after`` but an older transaction holds the fence: look
                # again when one of ours ends, or after a short re-poll delay.
                await self._fence_may_move(wakeup, min(repoll, remaining))
                repoll = min(repoll * 2, _REPOLL_MAX)
                continue
            wait = remaining if self._listener.connected else min(_FALLBACK_POLL, remaining)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), wait)

    async def oldest_transaction(self, min_age: float = 1.0) -> dict[str, Any] | None:
        """Describe the transaction holding the log back, if one is older than ``min_age`` s.

        Any transaction with an xid, in any database of the cluster, holds the log's read
        fence back: events committed after it started stay invisible to projections until it
        ends. When such events exist, returns how many (``held_events``) and since when
        (``held_since``, the oldest one's ``recorded_at``), and the oldest xid holder's pid,
        database, xid, state, application, start times and ages (never its query text).
        """
        held = await self.db.fetchrow(_HELD_BACK)
        if held is None or not held["n"]:
            return None
        row = await self.db.fetchrow(_OLDEST_TRANSACTION, min_age)
        if row is None:
            return None
        return {
            "held_events": int(held["n"]),
            "held_since": held["since"].isoformat(),
            "held_seconds": round(held["age"], 3),
            "pid": row["pid"],
            "database": row["datname"],
            "application": row["application_name"],
            "xid": row["xid"],
            "state": row["state"],
            "xact_start": row["xact_start"].isoformat(),
            "xact_age_seconds": round(row["xact_age"], 3),
            "query_start": row["query_start"].isoformat() if row["query_start"] else None,
            "query_age_seconds": round(row["query_age"], 3) if row["query_age"] else None,
        }

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._announcer = self._announcer, None
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2.0)
        await self._listener.close()
        await self.db.close()


def _placed(event: DomainEvent, stream_id: str, row: asyncpg.Record) -> DomainEvent:
    # The repository has already numbered its events: copy only an event that was not.
    version = row["version"]
    if event.stream_id == stream_id and event.version == version:
        return event
    return event.model_copy(update={"stream_id": stream_id, "version": version})


def _never(rows: list[asyncpg.Record]) -> bool:
    return False


def _has_events(rows: list[asyncpg.Record]) -> bool:
    return rows[0]["position"] is not None


class _Arrays:
    """The append statement's column arrays (nil event ids replaced by fresh ones)."""

    def __init__(self) -> None:
        self.streams: tuple[list[str], list[int], list[int]] = ([], [], [])
        self.columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        self.events: list[tuple[str, DomainEvent]] = []

    @classmethod
    def build(cls, streams: Sequence[StreamAppend]) -> _Arrays:
        arrays = cls()
        queued: dict[str, int] = {}
        ids, expected, bases = arrays.streams
        rows: list[tuple[str, DomainEvent, tuple[Any, ...]]] = []
        for index, (stream_id, expected_version, events) in enumerate(streams, start=1):
            ids.append(stream_id)
            expected.append(expected_version)
            bases.append(queued.get(stream_id, 0))
            queued[stream_id] = bases[-1] + len(events)
            for offset, event in enumerate(events, start=1):
                event, s = _with_id(event)
                row = (
                    index,
                    s.event_id,
                    s.event_type,
                    s.schema_version,
                    s.data,
                    s.metadata,
                    s.occurred_at,
                    offset,
                )
                rows.append((stream_id, event, row))
        # Every appender inserts streams in the same order, so two transactions appending to
        # the same streams wait on each other's index entries in one order, never deadlock.
        rows.sort(key=lambda r: r[0])
        for stream_id, event, row in rows:
            for column, value in zip(arrays.columns, row, strict=True):
                column.append(value)
            arrays.events.append((stream_id, event))
        return arrays

    def params(self) -> tuple[list[Any], ...]:
        return (*self.streams, *self.columns)


def _with_id(event: DomainEvent) -> tuple[DomainEvent, SerializedEvent]:
    # An event without an id (NIL_UUID) gets a random one here, as the store records it.
    if event.event_id == NIL_UUID:
        event = event.model_copy(update={"event_id": uuid4()})
    return event, serialize(event)


class _VersionRace(ConcurrencyError):
    """A racing transaction committed the same ``(stream_id, version)`` first."""


def _conflict(exc: asyncpg.UniqueViolationError, streams: Sequence[StreamAppend]) -> Exception:
    # The same (stream_id, version) or event id was committed by someone else first.
    detail = str(getattr(exc, "detail", "") or "")
    culprit = next((s for s in streams if f"=({s.stream_id}, " in detail), streams[0])
    if getattr(exc, "constraint_name", None) == "events_stream_version_key":
        return _VersionRace(culprit.stream_id, culprit.expected_version)
    return ConcurrencyError(culprit.stream_id, culprit.expected_version)


async def open_postgres_backend(
    url: str,
    *,
    migrate: bool = True,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout: float = CONNECT_TIMEOUT,
    command_timeout: float = COMMAND_TIMEOUT,
) -> Backend:
    """Open the pool, the store's listener and read models; create the schema when asked."""
    from cqrskit.read_models.postgres import PostgresReadModelStore

    db = await PostgresDatabase.open(
        url,
        min_size=min_size,
        max_size=max_size,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
    )
    store = PostgresEventStore(db)
    try:
        if migrate:
            await store.migrate()
        await store.start()
    except BaseException:
        await store.close()
        raise
    return Backend(url, store, PostgresReadModelStore(db))
