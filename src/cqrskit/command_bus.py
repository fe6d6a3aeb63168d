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

Every dispatch is idempotent (:mod:`cqrskit.idempotency`): the command's key is recorded in
the same atomic append as its events. A dispatch whose key is already recorded returns the
recorded outcome (same events, same token) and stores nothing; with another payload it raises
:class:`~cqrskit.errors.IdempotencyKeyReused`; while the same key is being dispatched in this
process it raises :class:`~cqrskit.errors.CommandInProgress`. The recorded key is looked up
only when an attempt fails (the append refused the key, a version check failed, or the handler
refused a command whose effects are already stored), so the hot path costs no extra round
trip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from cqrskit.errors import (
    CommandInProgress,
    ConcurrencyError,
    IdempotencyKeyReused,
    NoHandlerFoundError,
    PreconditionFailed,
)
from cqrskit.idempotency import (
    CommandRecord,
    Idempotency,
    StoredCommand,
    current_idempotency,
    same_command,
)
from cqrskit.messages import Command, DomainEvent, LogPosition, RecordedEvent
from cqrskit.middleware import Middleware, Next, chain
from cqrskit.repository import AggregateCache, Repository
from cqrskit.snapshots import Snapshotter
from cqrskit.store.protocol import AppendResult, Backlog, EventStore, StreamAppend

__all__ = ["CommandBus", "CommandHandler", "CommandResult"]

C = TypeVar("C", bound=Command)
# How often a handler that raised runs again because cached aggregates it read had moved.
_STALE_REDECISIONS = 2
CommandHandler = Callable[[C, Repository], Awaitable[None]]
# The options of the dispatch running in this task (middleware passes only the command).
_dispatching: ContextVar[tuple[Idempotency, CommandRecord] | None] = ContextVar(
    "cqrskit_dispatching", default=None
)


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
        self._in_flight: set[tuple[str, str]] = set()
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

    async def dispatch(
        self,
        command: Command,
        *,
        key: str | None = None,
        scope: str | None = None,
        request_hash: str | None = None,
        expect: Mapping[str, int] | None = None,
    ) -> CommandResult:
        """Handle ``command`` and store its events, once per key.

        ``key`` (default: the command id) and ``scope`` (default: the command's user id, else
        ``"anonymous"``) identify the command for idempotency; ``request_hash`` (default: a
        hash of the command without its id, timestamp and caller fields) tells a retry from a
        reuse of the key. ``expect`` maps stream ids to the versions the caller saw; a stream
        elsewhere raises :class:`~cqrskit.errors.PreconditionFailed` (not retried). Options set
        with :func:`cqrskit.idempotency.idempotent` apply when no keyword is given.

        Raises :class:`~cqrskit.errors.NoHandlerFoundError` for an unregistered type,
        :class:`~cqrskit.errors.IdempotencyKeyReused`,
        :class:`~cqrskit.errors.CommandInProgress`, and whatever the handler or the store
        raise (nothing is stored in that case).
        """
        if type(command) not in self._handlers:
            raise NoHandlerFoundError(f"no handler for {type(command).__name__}")
        options = current_idempotency()
        if options is None or (key, scope, request_hash, expect) != (None, None, None, None):
            options = Idempotency(key, scope, request_hash, dict(expect or {}))
        record = options.record(command)
        ident = (record.scope, record.key)
        if ident in self._in_flight:
            raise CommandInProgress("a command with this key is still running")
        self._in_flight.add(ident)
        token = _dispatching.set((options, record))
        try:
            result: CommandResult = await self._call(command)
        finally:
            _dispatching.reset(token)
            self._in_flight.discard(ident)
        if options.command is None:
            options.command = command
        return result

    async def _execute(self, command: Command) -> CommandResult:
        dispatching = _dispatching.get()
        if dispatching is None:  # called around dispatch: no record
            return await self._decide(command, None, {})
        options, record = dispatching
        try:
            return await self._decide(command, record, options.expect)
        except Exception as exc:
            # A command that failed here may have committed on an earlier attempt (a retry of
            # a request whose answer was lost, If-Match included): the record decides.
            try:
                stored = await self._store.find_command(record.scope, record.key)
            except Exception:
                raise exc from None
            if stored is None:
                if isinstance(exc, ConcurrencyError) and exc.current_version is None:
                    # The caller sees the current version when retries run out (HTTP 409).
                    with contextlib.suppress(Exception):
                        exc.current_version = await self._store.stream_version(exc.stream_id)
                raise
        return self._replay(stored, record, options, command)

    def _replay(
        self, stored: StoredCommand, record: CommandRecord, options: Idempotency, command: Command
    ) -> CommandResult:
        first = stored.record
        if first.command_type != record.command_type or (
            first.request_hash != record.request_hash
            and (options.request_hash is not None or not _repeats(first, command))
        ):
            raise IdempotencyKeyReused("this idempotency key was used for another request")
        command_type = next(t for t in self._handlers if t.__name__ == first.command_type)
        options.command = command_type.model_validate_json(first.command)
        options.replayed = True
        return CommandResult(stored.events, stored.position)

    async def _decide(
        self, command: Command, record: CommandRecord | None, expect: Mapping[str, int]
    ) -> CommandResult:
        handler = self._handlers[type(command)]
        store: EventStore = self._store
        if record is not None or expect:
            store = _RecordingStore(self._store, record, expect)
        for attempt in range(1, _STALE_REDECISIONS + 2):
            repository = Repository(store, self.cache, snapshots=self.snapshots)
            try:
                await handler(command, repository)
                break
            except Exception:
                if attempt > _STALE_REDECISIONS or not await _moved(repository):
                    raise
        appended = await repository.save(command)
        if appended is None:
            for stream_id, expected in expect.items():
                current = await self._store.stream_version(stream_id)
                if current != expected:
                    raise PreconditionFailed(stream_id, expected, current)
            if record is not None:
                await self._store.append(command=record)
            return CommandResult([], None)
        return CommandResult(appended.events, appended.position)


class _RecordingStore:
    """The bus's store for one dispatch: appends carry the command record and version checks."""

    def __init__(
        self, store: EventStore, record: CommandRecord | None, expect: Mapping[str, int]
    ) -> None:
        self._store = store
        self._record = record
        self._expect = expect

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        for stream_id, expected in self._expect.items():
            loaded = next((s.expected_version for s in streams if s.stream_id == stream_id), None)
            if loaded == expected:
                continue  # the append itself checks that the stream is still there
            current = await self._store.stream_version(stream_id)
            if current != expected:
                raise PreconditionFailed(stream_id, expected, current)
            if loaded is not None:
                # Decided on a stale cached copy: conflict, so the retry loads afresh.
                raise ConcurrencyError(stream_id, loaded, current)
        return await self._store.append(*streams, command=command or self._record)

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        return await self._store.read_stream(stream_id, after_version=after_version)

    async def stream_version(self, stream_id: str) -> int:
        return await self._store.stream_version(stream_id)

    async def find_command(self, scope: str, key: str) -> StoredCommand | None:
        return await self._store.find_command(scope, key)

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        return await self._store.read_all(after=after, limit=limit)

    async def head(self) -> LogPosition:
        return await self._store.head()

    async def count_after(self, after: LogPosition) -> int:
        return await self._store.count_after(after)

    async def backlog(self, after: LogPosition) -> Backlog:
        return await self._store.backlog(after)

    async def now(self) -> datetime:
        return await self._store.now()

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        return await self._store.wait_for_events(after, timeout)

    async def close(self) -> None:
        return None


def _repeats(first: CommandRecord, command: Command) -> bool:
    # Command hashes differ: the same payload may still be recorded under an earlier
    # release's hash, or with a dict's keys in another order (see same_command).
    try:
        earlier = type(command).model_validate_json(first.command)
    except ValueError:  # pydantic's ValidationError: a record of another shape
        return False
    return same_command(first, earlier, command)


async def _moved(repository: Repository) -> bool:
    # Whether cached aggregates the failed attempt read had moved (and were evicted). When
    # the check itself fails, the handler's own error is the one to report.
    try:
        return await repository.evict_stale()
    except Exception:
        return False
