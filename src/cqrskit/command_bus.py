"""Command bus: each command type goes to exactly one handler, through middleware.

A handler is ``async def handle(command, repository) -> None``: it loads aggregates from the
repository (a fresh unit of work per attempt), calls their methods, and returns. The bus then
appends every changed aggregate atomically with its expected version (and every aggregate it
only read, with no events, so the store confirms the decision was made on current versions)
and answers with the stored events and a consistency token.

With ``aggregate_cache_size`` > 0 the bus keeps an :class:`~cqrskit.repository.AggregateCache`
shared by its repositories: hot aggregates load without a database round trip. A stale entry
never leads to a lost update or a decision stored on old state: the append's version checks
fail, the command's streams are evicted and ``retry_on_conflict`` runs the handler again on
fresh state. When a handler raises (a rule rejected the command) after reading cached
aggregates, the bus checks their versions and, if any moved, evicts them and runs the handler
once more, so a rejection is never based on a stale cache either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from cqrskit.errors import NoHandlerFoundError
from cqrskit.messages import Command, LogPosition, RecordedEvent
from cqrskit.middleware import Middleware, Next, chain
from cqrskit.repository import AggregateCache, Repository
from cqrskit.snapshots import Snapshotter
from cqrskit.store.protocol import EventStore

__all__ = ["CommandBus", "CommandHandler", "CommandResult"]

C = TypeVar("C", bound=Command)
# How often a handler that raised runs again because cached aggregates it read had moved.
_STALE_REDECISIONS = 2
CommandHandler = Callable[[C, Repository], Awaitable[None]]


class CommandResult(NamedTuple):
    """What a dispatched command stored."""

    events: list[RecordedEvent]
    position: LogPosition | None
    """The log position of the last stored event (``None`` when nothing was stored)."""

    @property
    def token(self) -> str | None:
        """The consistency token to pass to queries for read-your-writes."""
        return None if self.position is None else self.position.token()


class CommandBus:
    """Routes commands to handlers and commits what they decide."""

    def __init__(
        self,
        store: EventStore,
        middleware: Sequence[Middleware] = (),
        *,
        aggregate_cache_size: int = 0,
        snapshots: Snapshotter | None = None,
    ) -> None:
        self._store = store
        self._handlers: dict[type[Command], CommandHandler[Any]] = {}
        self._call: Next = chain(list(middleware), self._execute)
        self.cache: AggregateCache | None = (
            AggregateCache(aggregate_cache_size) if aggregate_cache_size > 0 else None
        )
        self.snapshots = snapshots

    def register(self, command_type: type[C], handler: CommandHandler[C]) -> None:
        """Register the one handler for ``command_type``; a second registration is an error."""
        if command_type in self._handlers:
            raise ValueError(f"{command_type.__name__} already has a handler")
        self._handlers[command_type] = handler

    def handles(self, command_type: type[C]) -> Callable[[CommandHandler[C]], CommandHandler[C]]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: CommandHandler[C]) -> CommandHandler[C]:
            self.register(command_type, handler)
            return handler

        return decorate

    async def dispatch(self, command: Command) -> CommandResult:
        """Handle ``command`` and store its events.

        Raises :class:`~cqrskit.errors.NoHandlerFoundError` for an unregistered type, and
        whatever the handler or the store raise (nothing is stored in that case).
        """
        if type(command) not in self._handlers:
            raise NoHandlerFoundError(f"no handler for {type(command).__name__}")
        result: CommandResult = await self._call(command)
        return result

    async def _execute(self, command: Command) -> CommandResult:
        handler = self._handlers[type(command)]
        for attempt in range(1, _STALE_REDECISIONS + 2):
            repository = Repository(self._store, self.cache, snapshots=self.snapshots)
            try:
                await handler(command, repository)
                break
            except Exception:
                if attempt > _STALE_REDECISIONS or not await _moved(repository):
                    raise
        appended = await repository.save(command)
        if appended is None:
            return CommandResult([], None)
        return CommandResult(appended.events, appended.position)


async def _moved(repository: Repository) -> bool:
    # Whether cached aggregates the failed attempt read had moved (and were evicted). When
    # the check itself fails, the handler's own error is the one to report.
    try:
        return await repository.evict_stale()
    except Exception:
        return False
