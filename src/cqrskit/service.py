"""A service plugs its domain into cqrskit; the runtime wires it to a backend.

An application describes itself once as a :class:`Service` (its projections, its handler
registration, its HTTP routers, optional demo data). :class:`Runtime` opens the backend named
by the settings, builds the buses and one :class:`~cqrskit.projections.runner.ProjectionRunner`
per projection, and runs them; the runners share their log reads
(:class:`~cqrskit.projections.shared_reader.SharedLogReader`). Each runner's post-commit hook
feeds the :class:`~cqrskit.consistency.CheckpointWatch` that consistent queries wait on and, with
``CQRSKIT_REDIS_URL``, the :class:`~cqrskit.read_models.cache.RedisQueryCache`.
``cqrskit serve``, ``cqrskit worker`` and the other CLI commands all start from a runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus
from cqrskit.config import Settings
from cqrskit.consistency import CheckpointWatch
from cqrskit.messages import LogPosition
from cqrskit.middleware import log_messages, retry_on_conflict
from cqrskit.projections.generations import LiveReadModels
from cqrskit.projections.listeners import CommitListener
from cqrskit.projections.projection import Projection
from cqrskit.projections.rebuild import follow
from cqrskit.projections.rebuild_jobs import RebuildJobs
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.projections.shared_reader import SharedLogReader
from cqrskit.projections.status import LagMonitor, ProjectionLag, lag_thresholds, projection_lag
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.cache import RedisQueryCache
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.snapshots import Snapshotter, snapshot_store_for

if TYPE_CHECKING:
    from cqrskit.publish.nats import NatsPublisher

__all__ = ["Runtime", "Service"]


@dataclass(frozen=True)
class Service:
    """Everything an application contributes.

    ``register(command_bus, query_bus, read_models)`` registers handlers; ``routers`` returns
    FastAPI routers (imported lazily so workers need no web stack); ``demo_data(runtime,
    orders)`` loads a sample and returns how many commands it sent.
    """

    title: str
    projections: Callable[[], Sequence[Projection]]
    register: Callable[[CommandBus, QueryBus, ReadModelStore], None]
    routers: Callable[[], Sequence[Any]] = lambda: ()
    demo_data: Callable[[Runtime, int], Awaitable[int]] | None = None


@dataclass
class Runtime:
    """A service wired to a backend: buses, projection runners, lag."""

    service: Service
    settings: Settings
    backend: Backend
    command_bus: CommandBus
    query_bus: QueryBus
    runners: dict[str, ProjectionRunner]
    checkpoints: CheckpointWatch
    query_cache: RedisQueryCache | None = None
    publisher: NatsPublisher | None = None
    """Publishes integration events to NATS JetStream (when ``settings.nats_url`` is set)."""
    rebuilds: RebuildJobs = field(default_factory=RebuildJobs)
    """Blue/green rebuilds started on request in this process (the admin API)."""
    log_reader: SharedLogReader | None = None
    """The log reads the runners share (each page is queried and decoded once)."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(cls, service: Service, settings: Settings) -> Runtime:
        """Open the backend, build buses and runners, and migrate when settings say so."""
        backend = await open_backend(
            settings.database_url,
            migrate=settings.migrate,
            pool_size=settings.pool_size,
            connect_timeout=settings.database_connect_timeout,
            command_timeout=settings.database_command_timeout,
        )
        try:
            return await cls._wire(service, settings, backend)
        except BaseException:
            await backend.close()
            raise

    @classmethod
    async def _wire(cls, service: Service, settings: Settings, backend: Backend) -> Runtime:
        command_bus = CommandBus(
            backend.store,
            [log_messages(), retry_on_conflict(settings.command_retries)],
            aggregate_cache_size=settings.aggregate_cache_size,
            snapshots=Snapshotter(snapshot_store_for(backend.store), settings.snapshot_every),
        )
        projections = list(service.projections())
        watch = CheckpointWatch(
            backend.read_models.checkpoints,
            [p.name for p in projections],
            poll_interval=settings.consistency_poll_interval,
        )
        query_bus = QueryBus(
            [log_messages()], checkpoints=watch, max_wait=settings.consistency_timeout
        )
        # Queries read the live generation of each projection (see projections.generations).
        service.register(
            command_bus, query_bus, LiveReadModels.wrap(backend.read_models, projections)
        )
        cache, cached = _query_cache(settings, query_bus, {p.name for p in projections})
        runners = {}
        reader = SharedLogReader(backend.store)
        for p in projections:
            # The cache invalidates first: a woken waiter must not find an old cached answer.
            listeners: list[CommitListener] = [cache] if cache and p.name in cached else []
            runners[p.name] = ProjectionRunner(
                backend.store,
                backend.read_models,
                p,
                batch_size=settings.projection_batch_size,
                poll_interval=settings.projection_poll_interval,
                listeners=[*listeners, watch],
                max_retries=settings.projection_max_retries,
                on_failure=settings.projection_on_failure,
                reader=reader,
            )
        runtime = cls(service, settings, backend, command_bus, query_bus, runners, watch, cache)
        runtime.log_reader = reader
        if settings.nats_url:
            runtime.publisher = _nats_publisher(settings.nats_url, settings, backend)
        if settings.migrate:
            await runtime.migrate()
        return runtime

    async def migrate(self) -> None:
        """Create the snapshot table and every projection's tables (idempotent)."""
        if self.command_bus.snapshots is not None:
            await self.command_bus.snapshots.store.migrate()
        for runner in self.runners.values():
            await runner.migrate()

    def start_projections(self) -> None:
        """Start one background task per projection, following the log live."""
        self._stop.clear()
        self.checkpoints.attach(self.runners)
        for runner in self.runners.values():
            self._tasks.append(asyncio.create_task(follow(runner, self._stop), name=runner.name))
        if self.publisher is not None:
            # Its own checkpoint: rebuilding a projection never rewinds it or republishes.
            publisher = self.publisher
            self._tasks.append(asyncio.create_task(publisher.run(self._stop), name=publisher.name))
        monitor = LagMonitor(self, lag_thresholds(self.settings))
        interval = self.settings.lag_check_interval
        self._tasks.append(asyncio.create_task(monitor.run(self._stop, interval), name="lag"))

    async def catch_up(self, until: LogPosition | None = None, timeout: float = 30.0) -> None:
        """Apply pending events to every projection in this task (no background runners).

        With ``until`` (a command's position), keep going until every projection has applied
        it: on PostgreSQL a transaction still in flight elsewhere can hold the readable log
        back for a moment. Raises ``TimeoutError`` when that takes longer than ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            checkpoints = [await runner.catch_up() for runner in self.runners.values()]
            behind = [c for c in checkpoints if until is not None and c < until]
            if not behind:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"projections did not reach {until.token() if until else ''}")
            await self.backend.store.wait_for_events(min(behind), min(remaining, 0.05))

    async def lag(self) -> list[ProjectionLag]:
        """Measure each projection (and the NATS publisher, if any) against the log's head."""
        names = list(self.runners)
        if self.publisher is not None:
            names.append(self.publisher.name)
        return await projection_lag(self.backend.store, self.backend.read_models, names)

    async def close(self) -> None:
        """Stop rebuilds and projection tasks, then close the backend."""
        await self.rebuilds.close()
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.checkpoints.detach(self.runners)
        await self.checkpoints.close()
        if self.query_cache is not None:
            await self.query_cache.close()
        if self.log_reader is not None:
            await self.log_reader.close()
        await self.backend.close()


def _query_cache(
    settings: Settings, query_bus: QueryBus, projections: set[str]
) -> tuple[RedisQueryCache | None, set[str]]:
    # Check what queries declare they read; with a Redis URL, cache the cacheable ones.
    cached: set[str] = set()
    for query_type, registration in query_bus.registrations().items():
        unknown = set(registration.reads) - projections
        if unknown:
            raise ValueError(f"{query_type.__name__} reads unknown projections {sorted(unknown)}")
        if registration.cache is not None:
            if not registration.reads:
                raise ValueError(f"cached {query_type.__name__} must declare what it reads")
            cached.update(registration.reads)
    if not settings.redis_url or not cached:
        return None, set()
    cache = RedisQueryCache.from_url(
        settings.redis_url,
        query_bus.registration,
        prefix=settings.redis_prefix,
        ttl=settings.cache_ttl,
        timeout=settings.cache_timeout,
    )
    query_bus.use(cache)
    return cache, cached


def _nats_publisher(url: str, settings: Settings, backend: Backend) -> NatsPublisher:
    from cqrskit.publish.nats import NatsPublisher

    return NatsPublisher(
        backend.store,
        backend.read_models,
        url=url,
        stream=settings.nats_stream,
        subject_prefix=settings.nats_subject_prefix,
        duplicate_window=settings.nats_duplicate_window,
        batch_size=settings.projection_batch_size,
        poll_interval=settings.projection_poll_interval,
    )
