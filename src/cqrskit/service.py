"""A service plugs its domain into cqrskit; the runtime wires it to a backend.

An application describes itself once as a :class:`Service` (its projections, its handler
registration, its HTTP routers, optional demo data). :class:`Runtime` opens the backend named
by the settings, builds the buses and one :class:`~cqrskit.projections.runner.ProjectionRunner`
per projection, and runs them. ``cqrskit serve``, ``cqrskit worker`` and the other CLI
commands all start from a runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus
from cqrskit.config import Settings
from cqrskit.messages import LogPosition
from cqrskit.middleware import log_messages, retry_on_conflict
from cqrskit.projections.projection import Projection
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.projections.status import ProjectionLag, projection_lag
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.protocol import ReadModelStore

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
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def open(cls, service: Service, settings: Settings) -> Runtime:
        """Open the backend, build buses and runners, and migrate when settings say so."""
        backend = await open_backend(
            settings.database_url, migrate=settings.migrate, pool_size=settings.pool_size
        )
        command_bus = CommandBus(
            backend.store,
            [log_messages(), retry_on_conflict(settings.command_retries)],
        )
        query_bus = QueryBus([log_messages()])
        service.register(command_bus, query_bus, backend.read_models)
        runners = {
            p.name: ProjectionRunner(
                backend.store,
                backend.read_models,
                p,
                batch_size=settings.projection_batch_size,
                poll_interval=settings.projection_poll_interval,
            )
            for p in service.projections()
        }
        runtime = cls(service, settings, backend, command_bus, query_bus, runners)
        if settings.migrate:
            await runtime.migrate()
        return runtime

    async def migrate(self) -> None:
        """Create every projection's tables (idempotent)."""
        for runner in self.runners.values():
            await runner.migrate()

    def start_projections(self) -> None:
        """Start one background task per projection, following the log live."""
        self._stop.clear()
        for runner in self.runners.values():
            self._tasks.append(asyncio.create_task(runner.run(self._stop), name=runner.name))

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
        """Measure each projection against the head of the log."""
        return await projection_lag(
            self.backend.store, self.backend.read_models, list(self.runners)
        )

    async def close(self) -> None:
        """Stop projection tasks and close the backend."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.backend.close()
