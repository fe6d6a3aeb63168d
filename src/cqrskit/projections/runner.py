"""The one read-side loop: read a page of the log, apply it, commit with the checkpoint.

``catch_up`` drains the log; ``run`` follows it live, sleeping on the store's wake-up and
re-polling as a fallback. A batch's statements and its checkpoint commit in one transaction,
so after a crash nothing is applied twice and nothing is skipped. A handler that raises
stops the batch; the runner records the error, backs off exponentially and retries the same
batch (the projection is ``failed`` until it succeeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from cqrskit.errors import CqrskitError, ProjectionError
from cqrskit.messages import LogPosition, RecordedEvent
from cqrskit.projections.listeners import CommitListener
from cqrskit.projections.projection import Projection
from cqrskit.read_models.protocol import ReadModelStore, Statement
from cqrskit.store.protocol import EventStore

__all__ = ["ProjectionRunner", "ProjectionState", "RunnerStatus"]

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
    ) -> None:
        self.store = store
        self.read_models = read_models
        self.projection = projection
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.status = RunnerStatus()
        self.listeners = list(listeners)

    @property
    def name(self) -> str:
        """The projection's name."""
        return self.projection.name

    async def migrate(self) -> None:
        """Create the projection's tables (idempotent)."""
        await self.read_models.migrate(self.projection.schema)

    async def step(self, checkpoint: LogPosition, limit: int | None = None) -> LogPosition:
        """Apply the page after ``checkpoint``; return the new checkpoint (same when empty)."""
        page = await self.store.read_all(after=checkpoint, limit=limit or self.batch_size)
        if not page:
            return checkpoint
        return await self._apply_page(checkpoint, page)

    async def _apply_page(self, checkpoint: LogPosition, page: list[RecordedEvent]) -> LogPosition:
        statements = self._statements(page)
        position = page[-1].position
        await self.read_models.commit(self.name, statements, expected=checkpoint, position=position)
        self.status.events_applied += len(page)
        self.status.checkpoint = position
        if self.listeners:
            await self._tell_committed(position, page)
        return position

    def _statements(self, page: list[RecordedEvent]) -> list[Statement]:
        apply = self.projection.apply
        statements: list[Statement] = []
        for record in page:
            try:
                statements.extend(apply(record.event))
            except Exception as exc:
                raise ProjectionError(
                    f"{self.name} failed on {record.event.event_type} at"
                    f" {record.position.token()}: {type(exc).__name__}: {exc}"
                ) from exc
        return statements

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
        checkpoint = await self.read_models.checkpoint(self.name)
        self.status.checkpoint = checkpoint
        page = await self.store.read_all(after=checkpoint, limit=limit)
        while page:
            ahead = None
            if len(page) >= limit:
                after = page[-1].position
                ahead = asyncio.ensure_future(self.store.read_all(after=after, limit=limit))
            try:
                checkpoint = await self._apply_page(checkpoint, page)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)
                raise
            if progress is not None:
                progress(checkpoint, self.status.events_applied)
            if ahead is None:
                break
            page = await ahead
            if not page:
                page = await self.store.read_all(after=checkpoint, limit=limit)
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
                backoff = 0.05
                await self._wait(checkpoint, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.status.state = ProjectionState.FAILED
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
        await self.read_models.reset(
            self.name, [Statement(truncate, ()) for truncate in self.projection.truncate]
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
