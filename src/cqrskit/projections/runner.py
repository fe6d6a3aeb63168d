"""The one read-side loop: read a page of the log, apply it, commit with the checkpoint.

``catch_up`` drains the log; ``run`` follows it live, sleeping on the store's wake-up and
re-polling as a fallback. A batch's statements and its checkpoint commit in one transaction,
so after a crash nothing is applied twice and nothing is skipped. A handler that raises
is a poison event (see :mod:`cqrskit.projections.deadletters`): the runner applies the failed
page event by event to find it, retries it ``max_retries`` times with exponential backoff and
jitter, then stops at it (``stop``, the projection stays ``failed``) or parks its stream
(``park``). Database outages are retried with backoff for as long as they last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cqrskit.errors import CqrskitError, IntegrityError, ProjectionError
from cqrskit.messages import LogPosition, RecordedEvent
from cqrskit.projections.deadletters import (
    FailurePolicy,
    backoff_delays,
    describe,
    park_statement,
)
from cqrskit.projections.generations import live_tables
from cqrskit.projections.listeners import CommitListener
from cqrskit.projections.projection import Projection
from cqrskit.projections.shared_reader import LogView, SharedLogReader
from cqrskit.projections.status import Meter
from cqrskit.read_models.protocol import ReadModelStore, Statement
from cqrskit.store.protocol import EventStore

__all__ = [
    "PoisonEvent",
    "ProjectionRunner",
    "ProjectionState",
    "RebuildProgress",
    "RunnerStatus",
]

_log = logging.getLogger("cqrskit.projections")


class ProjectionState(StrEnum):
    """What a runner is doing."""

    IDLE = "idle"
    CATCHING_UP = "catching_up"
    RUNNING = "running"
    FAILED = "failed"
    REBUILDING = "rebuilding"
    STOPPED = "stopped"


@dataclass
class RunnerStatus:
    """A runner's live view of itself (read by health checks and the CLI)."""

    state: ProjectionState = ProjectionState.IDLE
    checkpoint: LogPosition | None = None
    last_error: str | None = None
    failures: int = 0
    events_applied: int = 0
    started_at: float = field(default_factory=time.monotonic)
    failing_position: LogPosition | None = None
    """The event the handler fails on (``None`` when nothing is failing)."""
    meter: Meter = field(default_factory=Meter)
    """Throughput and append-to-visible latency."""
    rebuild: RebuildProgress | None = None
    """A blue/green rebuild of this projection in progress (see ``projections.rebuild``)."""


@dataclass
class RebuildProgress:
    """How far a blue/green rebuild's shadow generation has come."""

    version: int
    generation: int
    total: int
    applied: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def percent(self) -> float:
        """Share of the log applied to the shadow, 0 to 100."""
        return 100.0 if self.total <= 0 else min(100.0, 100.0 * self.applied / self.total)

    @property
    def eta_seconds(self) -> float | None:
        """Estimated seconds until the shadow catches up (``None`` before the first batch)."""
        elapsed = time.monotonic() - self.started_at
        if self.applied <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.applied) / (self.applied / elapsed))


class PoisonEvent(ProjectionError):
    """A handler kept failing on one event; under ``stop`` the projection stays at it."""

    def __init__(self, message: str, record: RecordedEvent, attempts: int) -> None:
        super().__init__(message)
        self.record = record
        self.attempts = attempts


class _EventFailed(ProjectionError):
    """A handler raised (or its statements were refused) for one event."""


class ProjectionRunner:
    """Feeds one projection from the event store into the read-model store."""

    def __init__(
        self,
        store: EventStore,
        read_models: ReadModelStore,
        projection: Projection,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        max_backoff: float = 30.0,
        listeners: Sequence[CommitListener] = (),
        max_retries: int | None = None,
        on_failure: FailurePolicy | None = None,
        retry_delay: float = 0.05,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        checkpoint_name: str | None = None,
        generation: int | None = None,
        reader: SharedLogReader | None = None,
    ) -> None:
        self.store = store
        # Runners of one process share their log reads (each event is decoded once).
        self._log: LogView | None = reader.view() if reader is not None else None
        self.read_models = read_models
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.status = RunnerStatus()
        self.listeners = list(listeners)
        # Blue/green rebuilds: a shadow runner keeps its own checkpoint row and writes one
        # fixed generation; a live runner (generation None) follows the live generation.
        self.checkpoint_name = checkpoint_name or projection.name
        self.fixed_generation = generation
        self.generation = generation or 1
        self.fence: Statement | None = None
        """Run first in every batch's transaction (a lease's epoch check; see ``lease.py``)."""
        self.durable = True
        """Whether a batch's commit waits for its flush (not for a generation nobody reads)."""
        # Per projection (class attributes), unless the settings override them.
        retries = max_retries if max_retries is not None else getattr(projection, "max_retries", 3)
        policy = on_failure or getattr(projection, "on_failure", "stop")
        if policy not in ("stop", "park") or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{projection.name}: bad failure policy {policy!r}/{retries!r}")
        self.max_retries: int = retries
        self.on_failure: FailurePolicy = policy
        self.retry_delay = retry_delay
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._parked: frozenset[str] = frozenset()
        # The checkpoint at which ``_parked`` was last known to be complete. Only this runner
        # parks; retries and skips elsewhere only shrink the set, and a stale member is caught
        # by the park insert's NOT NULL blocker. So the set is reloaded only when the stored
        # checkpoint is not the one this runner last saw (another writer, a rewind, a start).
        self._parked_at: LogPosition | None = None

    @property
    def name(self) -> str:
        """The projection's name."""
        return self.projection.name

    async def migrate(self) -> None:
        """Create the projection's tables (idempotent), in the generation it writes."""
        await self._resolve_generation()
        generation = self.generation
        await self.read_models.migrate(
            [self.projection.physical(s, generation) for s in self.projection.schema]
        )

    async def _resolve_generation(self) -> None:
        if self.fixed_generation is None and self.projection.tables:
            self.generation = await live_tables(self.read_models).generation(self.projection)

    async def _switched(self) -> bool:
        # A blue/green switch (here or in another process) dropped this generation's tables
        # and moved the checkpoint: the batch was discarded, the next goes to the new tables.
        if self.fixed_generation is not None or not self.projection.tables:
            return False
        before = self.generation
        await live_tables(self.read_models).refresh()
        await self._resolve_generation()
        return self.generation != before

    async def step(self, checkpoint: LogPosition, limit: int | None = None) -> LogPosition:
        """Apply the page after ``checkpoint``; return the new checkpoint (same when empty)."""
        self._fresh()
        page = await self._read(checkpoint, limit or self.batch_size)
        if not page:
            return checkpoint
        return await self._apply_page(checkpoint, page)

    def _fresh(self) -> None:
        # The next reads must see what is readable now: a shared read must not answer with a
        # query that started before (its page could be short of what woke this runner).
        if self._log is not None:
            self._log.mark()

    async def _read(self, after: LogPosition, limit: int) -> list[RecordedEvent]:
        if self._log is not None:
            return await self._log.read_all(after=after, limit=limit)
        return await self.store.read_all(after=after, limit=limit)

    async def _apply_page(self, checkpoint: LogPosition, page: list[RecordedEvent]) -> LogPosition:
        try:
            return await self._commit(checkpoint, page)
        except _EventFailed:
            # Find the culprit: commit the page one event at a time, retrying the failing one.
            return await self._one_by_one(checkpoint, page)

    async def _commit(
        self,
        checkpoint: LogPosition,
        page: list[RecordedEvent],
        parking: tuple[str, int] | None = None,
    ) -> LogPosition:
        statements = self._statements(page, parking)
        if self.fence is not None:
            statements.insert(0, self.fence)
        position = page[-1].position
        try:
            await self.read_models.commit(
                self.checkpoint_name,
                statements,
                expected=checkpoint,
                position=position,
                durable=self.durable,
            )
        except IntegrityError as exc:
            parked = await self.read_models.parked_streams(self.name)
            if parked != self._parked:  # a retry or skip emptied a parked stream meanwhile
                self._parked = parked
                return await self._commit(checkpoint, page, parking)
            raise _EventFailed(f"{self.name}: batch refused: {describe(exc)}") from exc
        if parking is not None:
            self._parked = self._parked | {page[-1].event.stream_id}
        self._parked_at = position
        self.status.events_applied += len(page)
        self.status.checkpoint = position
        # The store's clock stamped recorded_at: latency by ours would carry the skew.
        now = await self.store.now()
        self.status.meter.committed(len(page), [r.recorded_at for r in page], now)
        if self.listeners:
            await self._tell_committed(position, page)
        return position

    def _statements(
        self, page: list[RecordedEvent], parking: tuple[str, int] | None = None
    ) -> list[Statement]:
        # ``parking``: (error, attempts) to park the page's single event instead of applying it.
        apply = self.projection.apply
        handled = self.projection.handled_types
        generation = self.generation
        physical = self.projection.physical
        statements: list[Statement] = []
        for record in page:
            event = record.event
            if parking is not None:
                statements.append(park_statement(self.name, record, *parking, first=True))
                continue
            if event.stream_id in self._parked and event.event_type in handled:
                error = "a previous event of this stream is parked"
                statements.append(park_statement(self.name, record, error, 0, first=False))
                continue
            try:
                statements.extend(
                    Statement(physical(s.sql, generation), s.params) for s in apply(event)
                )
            except Exception as exc:
                raise _EventFailed(
                    f"{self.name} failed on {event.event_type} at"
                    f" {record.position.token()}: {type(exc).__name__}: {exc}"
                ) from exc
        return statements

    async def _one_by_one(self, checkpoint: LogPosition, page: list[RecordedEvent]) -> LogPosition:
        for record in page:
            delays = backoff_delays(
                self.max_retries, base=self.retry_delay, cap=self.max_backoff, rng=self._rng
            )
            attempts = 0
            while True:
                try:
                    checkpoint = await self._commit(checkpoint, [record])
                    break
                except _EventFailed as exc:
                    attempts += 1
                    self._failed(record, exc, attempts)
                    delay = next(delays, None)
                    if delay is not None:
                        await self._sleep(delay)
                        continue
                    if self.on_failure == "stop":
                        raise PoisonEvent(str(exc), record, attempts) from exc
                    _log.warning(
                        "projection %s parked stream %s at %s after %d attempts: %s",
                        self.name,
                        record.event.stream_id,
                        record.position.token(),
                        attempts,
                        self.status.last_error,
                    )
                    checkpoint = await self._commit(checkpoint, [record], (describe(exc), attempts))
                    break
            self.status.failing_position = None
        return checkpoint

    def _failed(self, record: RecordedEvent, exc: Exception, attempts: int) -> None:
        self.status.state = ProjectionState.FAILED
        self.status.failures += 1
        self.status.failing_position = record.position
        self.status.last_error = str(exc)
        _log.warning(
            "projection %s: attempt %d of %d failed: %s",
            self.name,
            attempts,
            self.max_retries + 1,
            self.status.last_error,
        )

    async def catch_up(
        self,
        *,
        limit: int | None = None,
        progress: Callable[[LogPosition, int], None] | None = None,
    ) -> LogPosition:
        """Apply pages until the log is drained; return the final checkpoint.

        The log counts as drained at the first page shorter than the batch: nothing more was
        readable when it was read (events committed after that wake the live runner again).
        After a full page the next one is read while the current one commits (different
        connections and threads), so reading, applying and the commit's flush overlap. That
        read may come back empty because the commit was in flight (on PostgreSQL the commit
        itself holds the visibility fence back), so an empty one is repeated after the commit.
        """
        limit = limit or self.batch_size
        self._fresh()
        await self._resolve_generation()
        checkpoint = await self.read_models.checkpoint(self.checkpoint_name)
        self.status.checkpoint = checkpoint
        if checkpoint != self._parked_at:
            self._parked = await self.read_models.parked_streams(self.checkpoint_name)
            self._parked_at = checkpoint
        page = await self._read(checkpoint, limit)
        while page:
            ahead = None
            if len(page) >= limit:
                after = page[-1].position
                ahead = asyncio.ensure_future(self._read(after, limit))
            try:
                checkpoint = await self._apply_page(checkpoint, page)
            except BaseException as exc:
                switched = (
                    isinstance(exc, Exception)
                    and not isinstance(exc, _EventFailed)
                    and await self._switched()
                )
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                if not switched:
                    raise
                _log.info("projection %s: now on generation %d", self.name, self.generation)
                return await self.catch_up(limit=limit, progress=progress)
            if progress is not None:
                progress(checkpoint, self.status.events_applied)
            if ahead is None:
                break
            page = await ahead
            if not page:
                self._fresh()
                page = await self._read(checkpoint, limit)
        return checkpoint

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set, retrying failed batches with backoff."""
        backoff = 0.05
        self.status.state = ProjectionState.CATCHING_UP
        while not stop.is_set():
            try:
                checkpoint = await self.catch_up()
                self.status.state = ProjectionState.RUNNING
                self.status.last_error = None
                self.status.failing_position = None
                backoff = 0.05
                await self._wait(checkpoint, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.status.state = ProjectionState.FAILED
                if not isinstance(exc, PoisonEvent):  # counted per attempt already
                    self.status.failures += 1
                self.status.last_error = (
                    str(exc) if isinstance(exc, CqrskitError) else f"{type(exc).__name__}: {exc}"
                )
                _log.warning(
                    "projection %s: %s (retry in %.2fs)",
                    self.name,
                    self.status.last_error,
                    backoff,
                    exc_info=not isinstance(exc, CqrskitError),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self.max_backoff)
        self.status.state = ProjectionState.STOPPED

    async def _wait(self, checkpoint: LogPosition, stop: asyncio.Event) -> None:
        # Sleep until the store signals new events, the poll interval passes, or stop is set.
        waiter = asyncio.ensure_future(self.store.wait_for_events(checkpoint, self.poll_interval))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stopper):
                task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
        if not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]

    async def rebuild(
        self,
        *,
        batch_size: int = 1000,
        progress: Callable[[LogPosition, int], None] | None = None,
    ) -> LogPosition:
        """Empty the read model, rewind to the start and replay the whole log."""
        self.status.state = ProjectionState.REBUILDING
        self.status.events_applied = 0
        await self._resolve_generation()
        await self.read_models.reset(
            self.checkpoint_name,
            [
                Statement(self.projection.physical(truncate, self.generation), ())
                for truncate in self.projection.truncate
            ],
        )
        for listener in self.listeners:
            await self._tell(listener.rewound(self.projection))
        try:
            return await self.catch_up(limit=batch_size, progress=progress)
        finally:
            self.status.state = ProjectionState.IDLE

    async def _tell_committed(self, position: LogPosition, page: list[RecordedEvent]) -> None:
        # The post-commit hook (see cqrskit.projections.listeners): in order, never fatal.
        for listener in self.listeners:
            await self._tell(listener.committed(self.projection, position, page))

    async def _tell(self, call: Awaitable[None]) -> None:
        try:
            await call
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("projection %s: a commit listener failed", self.name)
