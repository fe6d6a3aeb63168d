"""Query bus: each query type goes to one handler that reads read models only.

A registration says which projections the query reads (``reads``) and, optionally, how its
answers may be cached (:class:`Cached`). :meth:`QueryBus.dispatch` answers at once, from
read models that may trail the log. :meth:`QueryBus.dispatch_consistent` is read-your-writes
(DESIGN.md guarantee 7):

1. It first waits until every projection the query reads has committed a checkpoint at or
   after the given log position (a command's consistency token), then answers.
2. The wait is bounded: at most the bus's ``max_wait``; a caller may ask for less, never
   more. When the time runs out it still answers, from the data it has, and the
   :class:`Answer` says ``stale=True``. It never raises because a projection is behind.
3. A query registered without ``reads`` waits for every projection the waiter knows.
4. While the query runs, :func:`consistency_requirement` returns the position it waited for,
   so middleware (the cache) never serves an entry older than that position.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from cqrskit.errors import NoHandlerFoundError
from cqrskit.messages import LogPosition, Query
from cqrskit.middleware import Middleware, Next, chain

__all__ = [
    "Answer",
    "Cached",
    "CheckpointWaiter",
    "QueryBus",
    "QueryHandler",
    "Registration",
    "consistency_requirement",
]

Q = TypeVar("Q", bound=Query)
R = TypeVar("R")
QueryHandler = Callable[[Q], Awaitable[Any]]

_required: ContextVar[LogPosition | None] = ContextVar("cqrskit_required_position", default=None)


def consistency_requirement() -> LogPosition | None:
    """The log position the query being answered waited for (``None`` for a plain dispatch)."""
    return _required.get()


@dataclass(frozen=True)
class Cached(Generic[Q]):
    """How answers of one query type may be cached.

    ``result_type`` is the handler's pydantic result (serialized with ``model_dump_json``);
    ``tags(query)`` names what the answer depends on, in the vocabulary of the projections
    the query reads (their :meth:`~cqrskit.projections.projection.Projection.cache_tags`);
    ``ttl`` (seconds) overrides the cache's default lifetime.
    """

    result_type: type[BaseModel]
    tags: Callable[[Q], Iterable[str]]
    ttl: float | None = None


@dataclass(frozen=True)
class Registration:
    """What the bus knows about one query type."""

    handler: QueryHandler[Any]
    reads: tuple[str, ...]
    cache: Cached[Any] | None


class Answer(NamedTuple, Generic[R]):
    """A query's result, and whether it may miss the position the caller waited for."""

    result: R
    stale: bool


class CheckpointWaiter(Protocol):
    """Waits until projections have applied a log position (see :mod:`cqrskit.consistency`)."""

    async def wait(self, names: Collection[str], position: LogPosition, timeout: float) -> bool:
        """Return ``True`` once every named projection (all when empty) is at ``position``.

        Returns ``False`` when ``timeout`` seconds pass first.
        """
        ...


class QueryBus:
    """Routes queries to their handlers through middleware (caching, consistency waits)."""

    def __init__(
        self,
        middleware: Sequence[Middleware] = (),
        *,
        checkpoints: CheckpointWaiter | None = None,
        max_wait: float = 5.0,
    ) -> None:
        self._registrations: dict[type[Query], Registration] = {}
        self._middleware = list(middleware)
        self._call: Next = chain(self._middleware, self._execute)
        self.checkpoints = checkpoints
        self.max_wait = max_wait

    def register(
        self,
        query_type: type[Q],
        handler: QueryHandler[Q],
        *,
        reads: Iterable[str] = (),
        cache: Cached[Q] | None = None,
    ) -> None:
        """Register the one handler for ``query_type``.

        ``reads`` names the projections whose read models the handler reads (what
        :meth:`dispatch_consistent` waits for); ``cache`` makes its answers cacheable.
        """
        if query_type in self._registrations:
            raise ValueError(f"{query_type.__name__} already has a handler")
        self._registrations[query_type] = Registration(handler, tuple(reads), cache)

    def use(self, middleware: Middleware) -> None:
        """Add ``middleware`` innermost, after every middleware added before it."""
        self._middleware.append(middleware)
        self._call = chain(self._middleware, self._execute)

    def registration(self, query_type: type[Query]) -> Registration | None:
        """The registration of ``query_type``, or ``None``."""
        return self._registrations.get(query_type)

    def registrations(self) -> Mapping[type[Query], Registration]:
        """Every registration, by query type."""
        return dict(self._registrations)

    async def dispatch(
        self, query: Query, result_type: type[R], *, at: LogPosition | None = None
    ) -> R:
        """Answer ``query``; ``result_type`` is the handler's declared result, checked.

        ``at`` does not wait: it tells middleware (the cache) that the answer must include
        that position, as after :meth:`wait_for`. Raises
        :class:`~cqrskit.errors.NoHandlerFoundError` for an unregistered type.
        """
        self._registered(query)
        reset = _required.set(at)
        try:
            result = await self._call(query)
        finally:
            _required.reset(reset)
        return self._checked(query, result, result_type)

    async def wait_for(
        self, query: Query, position: LogPosition, *, timeout: float | None = None
    ) -> bool:
        """Wait (bounded) until the projections ``query`` reads have applied ``position``.

        Returns whether they did. ``timeout`` is capped at ``max_wait`` (the default).
        Raises ``RuntimeError`` when the bus has no checkpoint waiter.
        """
        registration = self._registered(query)
        if self.checkpoints is None:
            raise RuntimeError("this query bus has no checkpoint waiter")
        limit = self.max_wait if timeout is None else min(max(timeout, 0.0), self.max_wait)
        return await self.checkpoints.wait(registration.reads, position, limit)

    async def dispatch_consistent(
        self,
        query: Query,
        result_type: type[R],
        position: LogPosition,
        *,
        timeout: float | None = None,
    ) -> Answer[R]:
        """:meth:`wait_for` ``position``, then answer, saying whether the wait ran out.

        Raises what :meth:`wait_for` and :meth:`dispatch` raise.
        """
        reached = await self.wait_for(query, position, timeout=timeout)
        result = await self.dispatch(query, result_type, at=position)
        return Answer(result, stale=not reached)

    def _registered(self, query: Query) -> Registration:
        registration = self._registrations.get(type(query))
        if registration is None:
            raise NoHandlerFoundError(f"no handler for {type(query).__name__}")
        return registration

    @staticmethod
    def _checked(query: Query, result: Any, result_type: type[R]) -> R:
        if not isinstance(result, result_type):
            raise TypeError(f"{type(query).__name__} answered {type(result).__name__}")
        return result

    async def _execute(self, query: Query) -> Any:
        return await self._registrations[type(query)].handler(query)
