"""Projection base: route events by type to pure handlers that return SQL statements.

A handler never touches the database: it returns the statements that bring the read model up
to date with one event, and the runner commits a whole batch of them together with the
checkpoint. Handlers are written so that a lookup they need (a customer's name, a product's
name) comes from the projection's own tables, fed by the same log, never from another
projection's tables whose position may differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from cqrskit.messages import DomainEvent
from cqrskit.read_models.protocol import Sql, Statement

__all__ = ["Projection", "on"]

E = TypeVar("E", bound=DomainEvent)
_Handler = Callable[[Any, Any], Iterable[Statement]]


def on(
    event_type: type[E],
) -> Callable[[Callable[[Any, E], Iterable[Statement]]], Callable[[Any, E], Iterable[Statement]]]:
    """Mark a method as the projection's handler for ``event_type``."""

    def mark(
        method: Callable[[Any, E], Iterable[Statement]],
    ) -> Callable[[Any, E], Iterable[Statement]]:
        method.__cqrskit_on__ = event_type  # type: ignore[attr-defined]
        return method

    return mark


class Projection:
    """A named, versioned, rebuildable read model.

    Subclasses set ``name``, ``schema`` (idempotent DDL), ``truncate`` (statements that empty
    every table the projection owns) and decorate handlers with :func:`on`.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    schema: ClassVar[Sequence[Sql]] = ()
    truncate: ClassVar[Sequence[Sql]] = ()
    _routes: ClassVar[dict[type[DomainEvent], _Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        routes = dict(cls._routes)
        for value in vars(cls).values():
            event_type = getattr(value, "__cqrskit_on__", None)
            if event_type is not None:
                routes[event_type] = value
        cls._routes = routes

    @property
    def handled_types(self) -> frozenset[str]:
        """Event type names this projection reacts to."""
        return frozenset(t.event_type for t in self._routes)

    def cache_tags(self, event: DomainEvent) -> Iterable[str]:
        """Name what ``event`` changes in this read model, for cache invalidation.

        Called only for handled events, after their batch committed. The default, ``"*"``,
        means "anything": every cached answer read from this projection is invalidated.
        Override it with exact tags (``f"order:{event.order_id}"``) that cached queries
        declare too (:class:`~cqrskit.query_bus.Cached`); return nothing when the event
        changes no row a query reads (a lookup table only).
        """
        return ("*",)

    def apply(self, event: DomainEvent) -> Iterable[Statement]:
        """Return the statements for one event (none when the type is not handled)."""
        handler = self._routes.get(type(event))
        if handler is None:
            return ()
        return handler(self, event)
