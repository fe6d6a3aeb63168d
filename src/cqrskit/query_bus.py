"""Query bus: each query type goes to one handler that reads read models only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from cqrskit.errors import NoHandlerFoundError
from cqrskit.messages import Query
from cqrskit.middleware import Middleware, Next, chain

__all__ = ["QueryBus", "QueryHandler"]

Q = TypeVar("Q", bound=Query)
R = TypeVar("R")
QueryHandler = Callable[[Q], Awaitable[Any]]


class QueryBus:
    """Routes queries to their handlers through middleware (caching, consistency waits)."""

    def __init__(self, middleware: Sequence[Middleware] = ()) -> None:
        self._handlers: dict[type[Query], QueryHandler[Any]] = {}
        self._call: Next = chain(list(middleware), self._execute)

    def register(self, query_type: type[Q], handler: QueryHandler[Q]) -> None:
        """Register the one handler for ``query_type``."""
        if query_type in self._handlers:
            raise ValueError(f"{query_type.__name__} already has a handler")
        self._handlers[query_type] = handler

    async def dispatch(self, query: Query, result_type: type[R]) -> R:
        """Answer ``query``; ``result_type`` is the handler's declared result, checked.

        Raises :class:`~cqrskit.errors.NoHandlerFoundError` for an unregistered type.
        """
        if type(query) not in self._handlers:
            raise NoHandlerFoundError(f"no handler for {type(query).__name__}")
        result = await self._call(query)
        if not isinstance(result, result_type):
            raise TypeError(f"{type(query).__name__} answered {type(result).__name__}")
        return result

    async def _execute(self, query: Query) -> Any:
        return await self._handlers[type(query)](query)
