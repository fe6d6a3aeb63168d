"""The history checker: what clients were told, against what the log and read models hold.

A fault test records every client operation in a :class:`History` (command id, stream,
expected version, outcome, response) while it injects its fault. Afterwards
:func:`check_history` reads the whole global log once and checks DESIGN.md's guarantees 1, 2
and 5 as a client can observe them:

1. an acknowledged (``OK``) command's events are in the log (not *lost*), exactly once;
2. a command that definitely failed (``FAILED``) left no events (nothing *leaked*);
3. no event id and no ``(stream, version)`` appears twice, and one command's events are one
   contiguous append (a retried command never stored its events twice: *duplicated*);
4. per stream, versions run ``1..n`` in log order (no *gaps*);
5. an ``UNKNOWN`` outcome (timeout, reset, 5xx) resolved to committed or absent, counted.

Events are matched to commands by ``metadata.causation_id`` (the bus stamps the command id
there). Several operations may share a command id (retries): the command is expected in the
log when any attempt was ``OK``; it must be absent when no attempt was ``OK`` and one was
``FAILED`` (a retry after an ``UNKNOWN`` that committed must answer the first, ``OK``,
outcome). Record a 409 "still in progress" as ``unknown``: it says nothing of the outcome.
An ``OK`` command known to store nothing is recorded with ``events=0``.

:func:`assert_converged` checks guarantee 3/4 end to end: every live read model equals a
rebuild from scratch, compared by a canonical hash of sorted rows (:func:`canonical_hash`).
The rebuild replays the same log into a private generation of the projection's tables in the
same database (``<table>__g<n>``, the machinery of blue/green rebuilds), so the live tables,
their checkpoints and any worker following them are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, LogPosition, RecordedEvent
from cqrskit.projections.generations import execute, live_tables
from cqrskit.projections.projection import Projection, physical_name
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from cqrskit.service import Runtime

__all__ = [
    "CheckResult",
    "History",
    "LogReader",
    "Operation",
    "Outcome",
    "assert_converged",
    "canonical_hash",
    "check_history",
    "read_log",
    "table_digests",
]

PAGE = 1000
"""Events read per ``read_all`` call."""


class Outcome(enum.Enum):
    """What the client was told."""

    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass
class Operation:
    """One client call: a command sent, and what came back."""

    command_id: UUID
    """The command id (the ``causation_id`` of every event it stored)."""
    stream_id: str
    """The main stream the command writes (informational for multi-stream commands)."""
    expected_version: int | None
    outcome: Outcome | None = None
    """``None`` while in flight; counted as ``UNKNOWN`` by the checker."""
    response: Any = None
    """Status code, result or error class name: for the report only."""
    events: int | None = None
    """How many events an ``OK`` command stored, when the client knows."""


@dataclass
class History:
    """Every operation of a test run, in the order they were begun."""

    operations: list[Operation] = field(default_factory=list)

    def begin(
        self, command_id: UUID, stream_id: str, expected_version: int | None = None
    ) -> Operation:
        """Record a call about to be made; finish it with :meth:`ok`, :meth:`failed` or
        :meth:`unknown`."""
        op = Operation(command_id, stream_id, expected_version)
        self.operations.append(op)
        return op

    def ok(self, op: Operation, response: Any = None, events: int | None = None) -> None:
        """The call was acknowledged: its events must be in the log."""
        op.outcome, op.response, op.events = Outcome.OK, response, events

    def failed(self, op: Operation, response: Any = None) -> None:
        """A definite failure (4xx, ``ConcurrencyError``...): it must have stored nothing."""
        op.outcome, op.response = Outcome.FAILED, response

    def unknown(self, op: Operation, response: Any = None) -> None:
        """Timeout, reset, 5xx, 503: the command may or may not have committed."""
        op.outcome, op.response = Outcome.UNKNOWN, response

    def summary(self) -> dict[str, int]:
        """Counts of operations by outcome (in-flight ones count as unknown)."""
        outcomes = [op.outcome or Outcome.UNKNOWN for op in self.operations]
        return {
            "operations": len(outcomes),
            "ok": outcomes.count(Outcome.OK),
            "failed": outcomes.count(Outcome.FAILED),
            "unknown": outcomes.count(Outcome.UNKNOWN),
        }


@dataclass
class CheckResult:
    """What :func:`check_history` found; :meth:`assert_clean` fails on any problem."""

    events: int
    streams: int
    ok: int
    failed: int
    unknown: int
    lost: list[UUID] = field(default_factory=list)
    """``OK`` commands with no events in the log (or fewer than the client was told)."""
    leaked: list[UUID] = field(default_factory=list)
    """``FAILED`` commands (never ``OK``) that left events."""
    duplicated: list[str] = field(default_factory=list)
    """Duplicate event ids or ``(stream, version)`` pairs, or a command stored twice."""
    gaps: list[str] = field(default_factory=list)
    """Streams whose versions are not ``1..n`` in log order."""
    unknown_committed: int = 0
    unknown_absent: int = 0
    commands: int = 0
    """Distinct command ids in the history."""

    @property
    def problems(self) -> list[str]:
        """Every problem, one line each."""
        return [
            *(f"lost: acknowledged command {c} is not in the log" for c in self.lost),
            *(f"leaked: failed command {c} left events" for c in self.leaked),
            *(f"duplicated: {d}" for d in self.duplicated),
            *(f"gap: {g}" for g in self.gaps),
        ]

    def assert_clean(self) -> None:
        """Raise ``AssertionError`` listing every problem found."""
        problems = self.problems
        if problems:
            shown = "\n  ".join(problems[:50])
            more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
            raise AssertionError(f"{len(problems)} history problem(s):\n  {shown}{more}")


class LogReader(Protocol):
    """The one store method the checker needs (every ``EventStore`` has it)."""

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]: ...


async def read_log(store: LogReader, *, page: int = PAGE) -> list[RecordedEvent]:
    """Read the whole global log, page by page, in log order."""
    log: list[RecordedEvent] = []
    after = LOG_START
    while True:
        batch = await store.read_all(after=after, limit=page)
        if not batch:
            return log
        log.extend(batch)
        after = batch[-1].position


async def check_history(history: History, store: LogReader) -> CheckResult:
    """Check the log in ``store`` against what ``history``'s clients were told."""
    log = await read_log(store)
    summary = history.summary()
    result = CheckResult(
        events=len(log),
        streams=len({r.event.stream_id for r in log}),
        ok=summary["ok"],
        failed=summary["failed"],
        unknown=summary["unknown"],
    )
    _check_log(log, result)

    # Where each command's events sit in the log.
    indexes: dict[UUID, list[int]] = defaultdict(list)
    for index, record in enumerate(log):
        causation = record.event.metadata.causation_id
        if causation is not None:
            indexes[causation].append(index)
    attempts: dict[UUID, list[Operation]] = defaultdict(list)
    for op in history.operations:
        attempts[op.command_id].append(op)
    result.commands = len(attempts)

    for command_id, ops in attempts.items():
        stored = indexes.get(command_id, [])
        if stored and stored[-1] - stored[0] + 1 != len(stored):
            result.duplicated.append(
                f"command {command_id}: its {len(stored)} events are not one append"
                f" (log indexes {stored[:10]})"
            )
        acknowledged = [op for op in ops if op.outcome is Outcome.OK]
        if acknowledged:
            told = {op.events for op in acknowledged if op.events is not None}
            if (not stored and told != {0}) or any(n > len(stored) for n in told):
                result.lost.append(command_id)
            elif any(n < len(stored) for n in told):
                result.duplicated.append(
                    f"command {command_id}: stored {len(stored)} events, client told {told}"
                )
        elif stored and any(op.outcome is Outcome.FAILED for op in ops):
            result.leaked.append(command_id)
        for op in ops:
            if op.outcome in (None, Outcome.UNKNOWN):
                if stored:
                    result.unknown_committed += 1
                else:
                    result.unknown_absent += 1
    return result


def _check_log(log: Sequence[RecordedEvent], result: CheckResult) -> None:
    # Guarantees 2, 6 and 7 of the store: unique ids and slots, contiguous versions in order.
    seen_ids: set[UUID] = set()
    slots: set[tuple[str, int]] = set()
    versions: dict[str, list[int]] = defaultdict(list)
    previous: LogPosition | None = None
    for record in log:
        event = record.event
        if event.event_id in seen_ids:
            result.duplicated.append(f"event id {event.event_id} appears twice")
        seen_ids.add(event.event_id)
        slot = (event.stream_id, event.version)
        if slot in slots:
            result.duplicated.append(f"stream {event.stream_id!r} version {event.version} twice")
        slots.add(slot)
        versions[event.stream_id].append(event.version)
        if previous is not None and record.position <= previous:
            result.gaps.append(
                f"log position {record.position.token()} after {previous.token()}: out of order"
            )
        previous = record.position
    for stream_id, found in versions.items():
        if found != list(range(1, len(found) + 1)):
            result.gaps.append(f"stream {stream_id!r} has versions {_abbreviate(found)}")


def _abbreviate(values: Sequence[int]) -> str:
    return repr(list(values)) if len(values) <= 20 else f"{list(values[:20])}... ({len(values)})"


# --- read models -----------------------------------------------------------------------------

_SQLITE_TABLE = sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1")
_POSTGRES_TABLE = sql("SELECT to_regclass($1)::text AS name")


async def _is_plain_table(read_models: ReadModelStore, table: str) -> bool:
    # Skip what this dialect does not create (SQLite's FTS5 index is SQLite-only) and SQLite
    # virtual tables, whose rows are the content table's, hashed already.
    if read_models.dialect == "sqlite":
        row = await read_models.fetchone(_SQLITE_TABLE, table)
        return row is not None and not str(row["sql"]).upper().startswith("CREATE VIRTUAL")
    row = await read_models.fetchone(_POSTGRES_TABLE, table)
    return row is not None and row["name"] is not None


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return ["bytes", bytes(value).hex()]
    if value is None or isinstance(value, bool | int | str):
        return value
    return [type(value).__name__, str(value)]


def _canonical_row(row: Mapping[str, Any]) -> str:
    items = sorted((str(k), _encode(v)) for k, v in row.items())
    return json.dumps(items, separators=(",", ":"), ensure_ascii=True)


async def table_digests(read_models: ReadModelStore, tables: Sequence[str]) -> list[str]:
    """One sha256 per listed table (in the order given) of its rows, sorted and encoded.

    A table this database does not have hashes as ``"absent"``. On PostgreSQL each row is
    rendered by the database (``to_jsonb``), on SQLite as sorted ``(column, value)`` pairs.
    """
    digests = []
    for table in tables:
        if not await _is_plain_table(read_models, table):
            digests.append("absent")
            continue
        # Table names are projections' declared constants (checked in the catalog above).
        query = sql(
            f"SELECT to_jsonb(t)::text AS row FROM {table} t",  # noqa: S608 - constant name
            sqlite=f"SELECT * FROM {table}",  # noqa: S608 - constant name
        )
        rows = sorted(_canonical_row(row) for row in await read_models.fetch(query))
        digest = hashlib.sha256()
        for row_text in rows:
            digest.update(row_text.encode())
            digest.update(b"\n")
        digests.append(f"{len(rows)}:{digest.hexdigest()}")
    return digests


async def canonical_hash(read_models: ReadModelStore, tables: Sequence[str]) -> str:
    """sha256 of every listed table's rows, sorted and canonically encoded.

    Table names themselves are not hashed (only their order), so two generations of the same
    tables hash alike when they hold the same rows.
    """
    digest = hashlib.sha256()
    for part in await table_digests(read_models, tables):
        digest.update(part.encode())
        digest.update(b"\n")
    return digest.hexdigest()


_verify_generations = itertools.count(1)
_FORGET = sql("DELETE FROM projection_checkpoints WHERE name = $1")
VERIFY_GENERATION_BASE = 900_000
"""Private generations used by :func:`assert_converged` start here (far above real ones)."""


async def wait_caught_up(
    runtime: Runtime, *, timeout: float = 60.0, drive: bool | None = None
) -> LogPosition:
    """Wait (bounded) until every projection's checkpoint is at the log's head; return it.

    ``drive`` (default: when the runtime runs no background runners) catches the runners up
    in this task; otherwise something else (``start_projections``, a worker) must.
    """
    if drive is None:
        drive = not runtime._tasks
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    store, read_models = runtime.backend.store, runtime.backend.read_models
    while True:
        head = await store.head()
        behind = {}
        for runner in runtime.runners.values():
            if drive:
                # Another writer moved the checkpoint, or a poison event: look again.
                with contextlib.suppress(ProjectionError):
                    await runner.catch_up()
            checkpoint = await read_models.checkpoint(runner.checkpoint_name)
            if checkpoint < head:
                behind[runner.name] = (checkpoint, runner.status)
        if not behind:
            return head
        if loop.time() > deadline:
            stuck = ", ".join(
                f"{name} at {cp.token()} ({status.state}, {status.last_error})"
                for name, (cp, status) in behind.items()
            )
            raise AssertionError(f"projections did not reach {head.token()}: {stuck}")
        await store.wait_for_events(min(cp for cp, _ in behind.values()), 0.05)


async def assert_converged(
    runtime: Runtime, *, timeout: float = 60.0, drive: bool | None = None
) -> dict[str, str]:
    """Assert every projection's live read model equals a rebuild from scratch.

    Waits (bounded) for every projection to reach the log's head (see :func:`wait_caught_up`),
    then replays the whole log into a private generation of each projection's tables, hashes
    both table by table and compares. Returns each projection's canonical hash. The private
    tables and their checkpoint are dropped afterwards; the live ones are never written.
    """
    await wait_caught_up(runtime, timeout=timeout, drive=drive)
    hashes: dict[str, str] = {}
    mismatches: list[str] = []
    for runner in runtime.runners.values():
        live, rebuilt = await _live_and_rebuilt(runtime, runner, timeout=timeout, drive=drive)
        for table, a, b in zip(runner.projection.tables, live, rebuilt, strict=True):
            if a != b:
                mismatches.append(f"{runner.name}: {table} live {a} != rebuilt {b}")
        hashes[runner.name] = hashlib.sha256("\n".join(live).encode()).hexdigest()
    if mismatches:
        raise AssertionError("read models differ from a rebuild:\n  " + "\n  ".join(mismatches))
    return hashes


async def _live_and_rebuilt(
    runtime: Runtime, runner: ProjectionRunner, *, timeout: float, drive: bool | None
) -> tuple[list[str], list[str]]:
    projection: Projection = runner.projection
    if not projection.tables:
        raise AssertionError(f"{projection.name} declares no tables: nothing to compare")
    read_models = runtime.backend.read_models
    generation = VERIFY_GENERATION_BASE + next(_verify_generations)
    shadow = ProjectionRunner(
        runtime.backend.store,
        read_models,
        projection,
        batch_size=runner.batch_size,
        checkpoint_name=f"{projection.name}@verify{generation}",
        generation=generation,
        max_retries=0,
        on_failure="stop",
    )
    drops = [
        Statement(sql(f"DROP TABLE IF EXISTS {physical_name(t, generation)}"), ())
        for t in projection.tables
    ]
    try:
        await shadow.migrate()
        for _ in range(20):
            rebuilt_at = await shadow.catch_up()
            live_at = await read_models.checkpoint(runner.checkpoint_name)
            if live_at == rebuilt_at:
                live_generation = await live_tables(read_models).generation(projection)
                live = await table_digests(
                    read_models, [physical_name(t, live_generation) for t in projection.tables]
                )
                rebuilt = await table_digests(
                    read_models, [physical_name(t, generation) for t in projection.tables]
                )
                # The live side may have moved while it was hashed: then compare again.
                if await read_models.checkpoint(runner.checkpoint_name) == live_at:
                    return live, rebuilt
            # Events arrived after the wait: bring both to the new head and compare there.
            await wait_caught_up(runtime, timeout=timeout, drive=drive)
        raise AssertionError(f"{projection.name}: the log kept moving; cannot compare")
    finally:
        await execute(read_models, [*drops, _FORGET(shadow.checkpoint_name)])
